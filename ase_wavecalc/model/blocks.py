"""Hamiltonian blocks from equivariant features, and the index bookkeeping of whole matrices.

A block between a shell of angular momentum l1 (rows) and one of l2 (columns) decomposes into irreps
L = |l1-l2|..l1+l2 of parity (-1)^(l1+l2):

    block[m1, m2] = sum_L sum_M sqrt(2L+1) wigner_3j(l1, l2, L)[m1, m2, M] f_L[M]

For each element (diagonal blocks) and each ordered element pair (off-diagonal blocks), ``BlockReadout``
precomputes one dense assembly matrix A (n_features, n_ao_a * n_ao_b) that maps the flat vector of all
needed irreps to the flat block, already in PySCF AO order (``BasisLayout.e3nn_to_pyscf`` is folded
into A's columns), so the assembly is a single matmul.

Diagonal blocks: only shell pairs a <= b are generated, each written to (a, b) and its transpose to
(b, a), and the odd-L part of a same-shell block is dropped (it is antisymmetric, wigner_3j(l, l, L) is
antisymmetric in m1, m2 for odd L): the atom block is symmetric with exactly n(n+1)/2 free numbers.

| object | shape | meaning |
|---|---|---|
| ``block_features(shells_a, shells_b, diagonal)`` | list of (a, b, L, p) | irreps needed by one block |
| ``BlockReadout(x)`` | (n, D, C) -> (n, heads, n_ao_a * n_ao_b) | readout + assembly, PySCF order |
| ``MatrixIndex`` | | where every block lands in the flat output, per batch composition |
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .layers import ConstantsMixin, FeatureLayout, _wigner_3j64

__all__ = ["block_features", "assembly_matrix", "BlockReadout", "MatrixIndex", "build_matrix_index"]


def block_features(shells_a, shells_b, diagonal: bool):
    """Irreps (a, b, L, parity) that a block needs, in a fixed order (shell pair, then L)."""
    feats = []
    for a, sa in enumerate(shells_a):
        for b, sb in enumerate(shells_b):
            if diagonal and b < a:
                continue
            p = (-1) ** (sa.l + sb.l)
            for L in range(abs(sa.l - sb.l), sa.l + sb.l + 1):
                if diagonal and a == b and L % 2 == 1:
                    continue
                feats.append((a, b, L, p))
    return feats


def _offsets(shells):
    out, o = [], 0
    for s in shells:
        out.append(o)
        o += 2 * s.l + 1
    return out, o


def assembly_matrix(shells_a, shells_b, perm_a, perm_b, diagonal: bool):
    """Dense CG assembly: rows = features (in ``block_features`` order, 2L+1 each), cols = PySCF block.

    ``perm_a`` / ``perm_b``: ``BasisLayout.e3nn_to_pyscf`` of the two elements (pyscf index of each e3nn
    AO index). Returns (features, A float64 (sum(2L+1), n_ao_a * n_ao_b)).
    """
    feats = block_features(shells_a, shells_b, diagonal)
    off_a, n_a = _offsets(shells_a)
    off_b, n_b = _offsets(shells_b)
    n_rows = sum(2 * L + 1 for _, _, L, _ in feats)
    A = torch.zeros(n_rows, n_a * n_b, dtype=torch.float64)
    row = 0
    for a, b, L, _p in feats:
        la, lb = shells_a[a].l, shells_b[b].l
        cg = math.sqrt(2 * L + 1) * _wigner_3j64(la, lb, L)  # (2la+1, 2lb+1, 2L+1)
        ia = perm_a[off_a[a]:off_a[a] + 2 * la + 1]
        ib = perm_b[off_b[b]:off_b[b] + 2 * lb + 1]
        cols = (ia[:, None] * n_b + ib[None, :]).reshape(-1)
        for M in range(2 * L + 1):
            A[row + M].index_add_(0, cols, cg[:, :, M].reshape(-1))
            if diagonal and a != b:  # the mirror block (b, a) = (a, b)^T
                cols_t = (ib[None, :] * n_b + ia[:, None]).reshape(-1)
                A[row + M].index_add_(0, cols_t, cg[:, :, M].reshape(-1))
        row += 2 * L + 1
    return feats, A


class BlockReadout(ConstantsMixin, nn.Module):
    """Readout of one element (diagonal) or one ordered element pair (off-diagonal) block.

    x (n, D, C) lab-frame features in l-order -> (n, heads, n_ao_a * n_ao_b), PySCF order.

    For every irrep the block needs (say k copies of (L, p)), a channel-mixing linear map C -> k copies per
    head; then the assembly matmul. Copies are padded to the largest k over the block's irreps so that
    all irreps go through one batched einsum; the padding entries are masked (structurally zero, they
    receive no gradient and are not counted by ``n_effective_parameters``).
    Weights start at ``init_scale`` (0.1) times the unit-variance scale, so an untrained model predicts
    about the mean atom blocks plus small couplings (faster early training than O(1 Hartree) noise).
    ``bias=True`` (diagonal blocks) adds learnable per-element constants to the 0e copies: the element's
    mean atom block (the trainer may set it from data with ``set_mean_block``). Head 0 is the Fock
    matrix; head 1 (config ``delta_hcore_head``) is Delta h (output "delta_hcore"), initialized to zero.
    """

    def __init__(self, layout: FeatureLayout, channels: int, heads: int, shells_a, shells_b, perm_a, perm_b,
                 diagonal: bool, bias: bool, init_scale: float = 0.1):
        super().__init__()
        self.layout, self.channels, self.heads = layout, int(channels), int(heads)
        self.diagonal = bool(diagonal)
        feats, A = assembly_matrix(shells_a, shells_b, perm_a, perm_b, diagonal)
        self.n_ao_a = _offsets(shells_a)[1]
        self.n_ao_b = _offsets(shells_b)[1]
        counts: dict[int, int] = {}
        feat_irrep = []
        for _a, _b, L, p in feats:
            if L > layout.lmax:
                raise ValueError(f"block needs L={L} but features stop at lmax={layout.lmax}")
            q = layout.index(L, p)
            feat_irrep.append(q)
            counts[q] = counts.get(q, 0) + 1
        self.irreps_needed = sorted(counts)
        self.copies = max(counts.values())
        local = {q: i for i, q in enumerate(self.irreps_needed)}
        comps, local_start = [], []
        for q in self.irreps_needed:
            local_start.append(len(comps))
            comps += layout.irrep_comps(q)
        self.register_constant("comps", torch.tensor(comps, dtype=torch.long))
        comp_local = torch.tensor([local[int(layout.comp_irrep_l[c])] for c in comps], dtype=torch.long)
        self.register_constant("comp_local", comp_local)
        # which entries of the padded output (len(comps), copies), flattened per head, each feature row reads
        seen: dict[int, int] = {}
        used = []
        for q in feat_irrep:
            k = seen.get(q, 0)
            seen[q] = k + 1
            l = layout.irreps[q][0]
            used += [(local_start[local[q]] + i) * self.copies + k for i in range(2 * l + 1)]
        self.register_constant("used", torch.tensor(used, dtype=torch.long))
        self.register_constant("assembly", A)
        mask = torch.zeros(len(self.irreps_needed), 1, self.heads, self.copies, dtype=torch.float64)
        for q, k in counts.items():
            mask[local[q], :, :, :k] = 1.0
        self.register_constant("mask", mask.reshape(len(self.irreps_needed), 1, self.heads * self.copies))
        w = torch.randn(len(self.irreps_needed), channels, self.heads, self.copies)
        w = w * (init_scale / math.sqrt(channels))
        if self.heads > 1:
            w[:, :, 1:] = 0.0  # core correction starts at zero
        self.weight = nn.Parameter(w.reshape(len(self.irreps_needed), channels, self.heads * self.copies)
                                   * self.mask.to(w.dtype))
        self.has_bias = bool(bias) and layout.index(0, 1) in counts
        if self.has_bias:
            self.bias = nn.Parameter(torch.zeros(self.heads, self.copies))
            n0 = counts[layout.index(0, 1)]
            bmask = torch.zeros(self.heads, self.copies, dtype=torch.float64)
            bmask[:, :n0] = 1.0
            self.register_constant("bias_mask", bmask)
            self.bias_pos = local_start[local[layout.index(0, 1)]]
        self.n_features = len(feats)

    @property
    def n_effective_parameters(self) -> int:
        n = int(self.mask.sum().item()) * self.channels
        if self.has_bias:
            n += int(self.bias_mask.sum().item())
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xg = x[:, self.comps]                                       # (n, d_local, C)
        w = (self.weight * self.mask)[self.comp_local]              # (d_local, C, heads*copies)
        out = torch.einsum("ndc,dck->ndk", xg, w).view(n, -1, self.heads, self.copies)
        if self.has_bias:
            pos = self.bias_pos
            b = (self.bias * self.bias_mask)[None, None]
            out = torch.cat([out[:, :pos], out[:, pos:pos + 1] + b, out[:, pos + 1:]], 1)
        feats = out.transpose(1, 2).reshape(n, self.heads, -1)[:, :, self.used]   # (n, heads, rows)
        return feats @ self.assembly                                # (n, heads, n_ao_a * n_ao_b)

    @torch.no_grad()
    def set_mean_block(self, block, head: int = 0) -> None:
        """Least-squares fit of the 0e biases to a mean atom block (n_ao, n_ao) in PySCF order (Hartree).

        Only the rotation-invariant part of ``block`` can be represented; the rest is ignored.
        """
        if not self.has_bias:
            raise ValueError("this readout has no 0e bias")
        block = torch.as_tensor(np.asarray(block), dtype=torch.float64).reshape(-1)
        A = self._const_master["assembly"]
        used = self._const_master["used"]
        n0 = int(self._const_master["bias_mask"][0].sum())
        rows = []
        for k in range(n0):
            hits = torch.nonzero(used == self.bias_pos * self.copies + k).flatten()
            rows.append(hits[0] if len(hits) else None)
        basis = torch.stack([A[r] if r is not None else torch.zeros(A.shape[1], dtype=torch.float64)
                             for r in rows])                         # (n0, n_ao^2)
        coef = torch.linalg.lstsq(basis.T, block[:, None]).solution[:, 0]
        self.bias[head, :n0] = coef.to(device=self.bias.device, dtype=self.bias.dtype)


@dataclass
class MatrixIndex:
    """Where every atom block and every pair block of a batch lands in the flat output.

    groups: list of (kind, key, item_index, n_items) with kind "atom" (key Z, items = atom indices) or
    "pair" (key (Z_i, Z_j), items = edge indices); the flat values of all groups, concatenated in this
    order and gathered with ``gather``, give the matrices of all molecules back to back (row-major).
    """
    n_mol: int
    nao: list
    offsets: list           # start of each molecule's matrix in the flat output
    total: int
    same_composition: bool
    src: torch.Tensor       # (E,) neighbour j of edge e (message j -> i)
    dst: torch.Tensor       # (E,) centre i
    elem: torch.Tensor      # (N,) element index
    batch: torch.Tensor     # (N,)
    groups: list
    gather: torch.Tensor    # (total,) position in the concatenated group values of each output entry
    pair_sizes: list        # number of edges of each pair group, in group order (edges are sorted so)


def build_matrix_index(basis_layout, elements, numbers: np.ndarray, batch: np.ndarray, device) -> MatrixIndex:
    """All-pairs edges within each molecule and the block placement for one batch composition."""
    numbers = np.asarray(numbers, dtype=np.int64)
    batch = np.asarray(batch, dtype=np.int64)
    z_index = {int(z): i for i, z in enumerate(elements)}
    unknown = sorted({int(z) for z in numbers} - set(z_index))
    if unknown:
        raise ValueError(f"elements {unknown} are not covered by this model (elements {list(elements)})")
    n_mol = int(batch.max()) + 1 if len(batch) else 0
    if len(batch) and (batch.min() < 0 or len(np.unique(batch)) != n_mol):
        raise ValueError("batch must hold every molecule index 0..B-1")
    n_ao_z = {z: basis_layout.n_ao(z) for z in z_index}
    mol_atoms = [np.nonzero(batch == b)[0] for b in range(n_mol)]
    nao, offsets, ao_start = [], [], np.zeros(len(numbers), dtype=np.int64)
    total = 0
    src, dst = [], []
    for atoms in mol_atoms:
        o = 0
        for a in atoms:
            ao_start[a] = o
            o += n_ao_z[int(numbers[a])]
        nao.append(o)
        offsets.append(total)
        total += o * o
        if len(atoms) > 1:
            ii, jj = np.meshgrid(atoms, atoms, indexing="ij")
            keep = ii != jj
            dst.append(ii[keep])
            src.append(jj[keep])
    src = np.concatenate(src) if src else np.zeros(0, dtype=np.int64)
    dst = np.concatenate(dst) if dst else np.zeros(0, dtype=np.int64)
    # edges sorted by (element of i, element of j), so that each pair type is a contiguous range
    rank = {int(z): i for i, z in enumerate(elements)}
    zrank = np.array([rank[int(z)] for z in numbers], dtype=np.int64)
    order = np.argsort(zrank[dst] * len(elements) + zrank[src], kind="stable")
    src, dst = src[order], dst[order]
    mol_nao = np.asarray(nao, dtype=np.int64)[batch] if len(batch) else np.zeros(0, dtype=np.int64)
    mol_off = np.asarray(offsets, dtype=np.int64)[batch] if len(batch) else np.zeros(0, dtype=np.int64)
    groups, dest = [], []
    for z in elements:
        atoms = np.nonzero(numbers == z)[0]
        if len(atoms) == 0:
            continue
        n = n_ao_z[int(z)]
        r = np.arange(n)
        base = mol_off[atoms] + ao_start[atoms] * (mol_nao[atoms] + 1)
        idx = base[:, None, None] + r[None, :, None] * mol_nao[atoms][:, None, None] + r[None, None, :]
        groups.append(("atom", int(z), torch.as_tensor(atoms, device=device), len(atoms)))
        dest.append(idx.reshape(-1))
    zi, zj = numbers[dst], numbers[src]
    pair_sizes = []
    for za in elements:
        for zb in elements:
            edges = np.nonzero((zi == za) & (zj == zb))[0]
            if len(edges) == 0:
                continue
            i, j = dst[edges], src[edges]
            ra, rb = np.arange(n_ao_z[int(za)]), np.arange(n_ao_z[int(zb)])
            base = mol_off[i] + ao_start[i] * mol_nao[i] + ao_start[j]
            idx = base[:, None, None] + ra[None, :, None] * mol_nao[i][:, None, None] + rb[None, None, :]
            if len(pair_sizes) and edges[0] != sum(pair_sizes) or edges[-1] - edges[0] + 1 != len(edges):
                raise RuntimeError("edges of one element pair are not contiguous")
            pair_sizes.append(len(edges))
            groups.append(("pair", (int(za), int(zb)), torch.as_tensor(edges, device=device), len(edges)))
            dest.append(idx.reshape(-1))
    dest = np.concatenate(dest) if dest else np.zeros(0, dtype=np.int64)
    if len(dest) != total or not np.array_equal(np.sort(dest), np.arange(total)):
        raise RuntimeError("block placement does not cover every matrix entry exactly once")
    gather = np.argsort(dest)
    same = n_mol > 0 and all(len(a) == len(mol_atoms[0]) and np.array_equal(numbers[a], numbers[mol_atoms[0]])
                             for a in mol_atoms)
    elem = np.array([z_index[int(z)] for z in numbers], dtype=np.int64)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
    return MatrixIndex(n_mol=n_mol, nao=nao, offsets=offsets, total=total, same_composition=bool(same),
                       src=as_t(src), dst=as_t(dst), elem=as_t(elem), batch=as_t(batch), groups=groups,
                       gather=as_t(gather), pair_sizes=pair_sizes)
