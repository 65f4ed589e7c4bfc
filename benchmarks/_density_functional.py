"""A learned energy functional of the predicted density matrix (the DeePHF / DeePKS / OrbNet idea): design 2
of the energy paths, measured and rejected (docs/results.md), so it lives beside its benchmark
(``benchmarks/density_functional.py``) and not in the package.

    E = E_nn(R) + sum_A [ e0(Z_A) + w(Z_A) . x_A + 0.01 * MLP( x_A, Z_A ) ]        (Hartree)

where P (nao, nao) is the closed-shell density matrix of the Hamiltonian network's F (PySCF AO order)
and d_A are rotation-invariant descriptors of the density-matrix blocks that touch atom A, x_A = d_A
standardized per element; w is a per-element linear term (fitted in closed form first,
:func:`linear_fit_rows`), the MLP learns the rest. This is
design 2 of the energy paths compared in ``benchmarks/density_functional.py``; P, not geometry, is
the only input of the learned part.

Descriptors. A rotation R acts on the AO block of a shell of angular momentum l by one orthogonal
matrix D^l(R) (PySCF's real spherical harmonics), so the block P_ab between shells a (l_a) and b (l_b)
becomes D^(l_a) P_ab D^(l_b)^T. Its squared Frobenius norm ||P_ab||^2 is invariant, and so is its trace
when l_a = l_b (both shells share D^l). Per atom A (shells a, b of A; Z an element, l an angular
momentum):

| group | entries | meaning |
|---|---|---|
| on-site norms | ||P_ab||^2, a <= b on A | size and shape of the atom's own density |
| on-site traces | tr P_ab, a <= b on A, l_a = l_b | populations-like scalars |
| off-site sums | sum over atoms B != A of element Z of sum over shells b of B with l_b = l of ||P_ab||^2 | bonding to each element, per shell of A |

They are smooth polynomials of P (no eigenvalues, so no kinks at degeneracies), permutation-invariant
(sums over B) and exact functions of the AO layout of ``basis``. Shapes: per atom a vector of the
element's length, padded with zeros to the longest element's (n_atoms, n_features).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ase_wavecalc.basis import BasisLayout

__all__ = ["DensityDescriptors", "DensityFunctional", "ENERGY_SCALE"]

ENERGY_SCALE = 0.01   # Hartree per unit output of the per-atom MLP


class _Layout:
    """Index arrays of one composition: which entries of the shell-pair tables each atom's vector holds."""

    def __init__(self, basis: BasisLayout, numbers: np.ndarray, elements: tuple[int, ...], lmax: int,
                 n_features: int):
        shells = []                     # (atom, l, first AO)
        ao = 0
        for i, z in enumerate(numbers):
            for s in basis.shells(int(z)):
                shells.append((i, s.l, ao))
                ao += s.n_ao
        nao, ns = ao, len(shells)
        M = torch.zeros(nao, ns, dtype=torch.float64)       # AO -> shell indicator
        K = torch.zeros(nao, nao, dtype=torch.float64)      # same l and same m: the trace pairing
        for b, (_, l, o) in enumerate(shells):
            M[o:o + 2 * l + 1, b] = 1.0
        for a, (_, la, oa) in enumerate(shells):
            for b, (_, lb, ob) in enumerate(shells):
                if la == lb:
                    K[oa + torch.arange(2 * la + 1), ob + torch.arange(2 * la + 1)] = 1.0
        atom = torch.tensor([s[0] for s in shells])
        ell = torch.tensor([s[1] for s in shells])
        n_cols = len(elements) * (lmax + 1)
        G = torch.zeros(ns, n_cols, dtype=torch.float64)    # shell -> (element of its atom, l) column
        for b, (i, l, _) in enumerate(shells):
            G[b, elements.index(int(numbers[i])) * (lmax + 1) + l] = 1.0
        self.M, self.K, self.G = M, K, G
        self.off_mask = (atom[:, None] != atom[None, :]).to(torch.float64)
        # flat sources: [N (ns*ns) | T (ns*ns) | off (ns*n_cols) | a zero slot for padding]
        zero = 2 * ns * ns + ns * n_cols
        index = torch.full((len(numbers), n_features), zero, dtype=torch.long)
        for i, z in enumerate(numbers):
            mine = [b for b in range(ns) if shells[b][0] == i]
            cols = []
            cols += [a * ns + b for ai, a in enumerate(mine) for b in mine[ai:]]
            cols += [ns * ns + a * ns + b for ai, a in enumerate(mine) for b in mine[ai:] if ell[a] == ell[b]]
            present = [e * (lmax + 1) + l for e, ze in enumerate(elements) for l in range(lmax + 1)
                       if any(s.l == l for s in basis.shells(ze))]
            cols += [2 * ns * ns + a * n_cols + c for a in mine for c in present]
            if len(cols) > n_features:
                raise RuntimeError("descriptor layout longer than its element's count")
            index[i, :len(cols)] = torch.tensor(cols)
        self.index = index
        self.nao = nao


class DensityDescriptors:
    """Invariant per-atom descriptors of a density matrix (module docstring), for ``basis`` and ``elements``.

    ``descriptors(numbers, dm)``: numbers (n,) ints, dm (nao, nao) or (B, nao, nao) (PySCF AO order,
    differentiable) -> (n, n_features) or (B, n, n_features). ``n_features``: the longest element's count.
    """

    def __init__(self, basis: str, elements):
        self.elements = tuple(sorted(int(z) for z in elements))
        self.basis = BasisLayout(basis, self.elements)
        self.lmax = self.basis.max_l
        self.lengths = {}
        for z in self.elements:
            sh = self.basis.shells(z)
            k = len(sh)
            n_tr = sum(1 for i in range(k) for j in range(i, k) if sh[i].l == sh[j].l)
            present = sum(1 for ze in self.elements for l in range(self.lmax + 1)
                          if any(s.l == l for s in self.basis.shells(ze)))
            self.lengths[z] = k * (k + 1) // 2 + n_tr + k * present
        self.n_features = max(self.lengths.values())
        self._cache: OrderedDict = OrderedDict()

    def layout(self, numbers) -> _Layout:
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        unknown = sorted(set(numbers.tolist()) - set(self.elements))
        if unknown:
            raise ValueError(f"elements {unknown} are not covered by these descriptors ({list(self.elements)})")
        key = numbers.tobytes()
        lay = self._cache.get(key)
        if lay is None:
            lay = _Layout(self.basis, numbers, self.elements, self.lmax, self.n_features)
            self._cache[key] = lay
            while len(self._cache) > 16:
                self._cache.popitem(last=False)
        return lay

    def __call__(self, numbers, dm: torch.Tensor) -> torch.Tensor:
        lay = self.layout(numbers)
        if dm.shape[-2:] != (lay.nao, lay.nao):
            raise ValueError(f"density matrix of shape {tuple(dm.shape)} for a molecule with {lay.nao} AOs")
        M, K, G = (t.to(dm.dtype) for t in (lay.M, lay.K, lay.G))
        norms = M.T @ (dm * dm) @ M                      # (..., ns, ns) ||P_ab||^2
        traces = M.T @ (dm * K) @ M                      # (..., ns, ns) tr P_ab (same l), else 0
        off = (norms * lay.off_mask.to(dm.dtype)) @ G    # (..., ns, n_cols)
        flat = torch.cat([norms.flatten(-2), traces.flatten(-2), off.flatten(-2),
                          norms.new_zeros(norms.shape[:-2] + (1,))], -1)
        return flat[..., lay.index]


class DensityFunctional(nn.Module):
    """Per-atom energy MLP on standardized density descriptors plus per-element offsets (Hartree).

    ``forward(numbers, dm)`` -> () energy without E_nn; dm (nao, nao) or (B, nao, nao) -> (B,).
    Standardization (mean, scale per element and feature) is fixed from training frames with
    :meth:`set_statistics` before training.
    """

    def __init__(self, basis: str, elements, hidden: int = 128):
        super().__init__()
        self.descriptors = DensityDescriptors(basis, elements)
        n_el, n_f = len(self.descriptors.elements), self.descriptors.n_features
        self.config = {"basis": str(basis), "elements": list(self.descriptors.elements), "hidden": int(hidden)}
        self.register_buffer("mean", torch.zeros(n_el, n_f, dtype=torch.float64))
        self.register_buffer("scale", torch.ones(n_el, n_f, dtype=torch.float64))
        self.e0 = nn.Parameter(torch.zeros(n_el, dtype=torch.float64))
        self.linear = nn.Parameter(torch.zeros(n_el, n_f, dtype=torch.float64))
        self.mlp = nn.Sequential(nn.Linear(n_f + n_el, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1)).double()
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def element_index(self, numbers) -> torch.Tensor:
        lookup = {z: i for i, z in enumerate(self.descriptors.elements)}
        return torch.tensor([lookup[int(z)] for z in np.asarray(numbers).reshape(-1)], dtype=torch.long)

    @torch.no_grad()
    def set_statistics(self, numbers, features: torch.Tensor) -> None:
        """Mean and standard deviation per element and feature from (B, n, n_features) training descriptors."""
        el = self.element_index(numbers)
        for e in range(len(self.descriptors.elements)):
            x = features[:, el == e].reshape(-1, features.shape[-1])
            if len(x):
                self.mean[e] = x.mean(0)
                self.scale[e] = x.std(0).clamp_min(1e-8)

    def standardized(self, numbers, features: torch.Tensor) -> torch.Tensor:
        """x = (d - mean) / scale per element, (..., n, n_features)."""
        el = self.element_index(numbers)
        return (features - self.mean[el]) / self.scale[el]

    def element_sums(self, numbers, dm: torch.Tensor) -> torch.Tensor:
        """Sum of the standardized descriptors over the atoms of each element, (..., n_elements, n_features):
        the inputs of the linear term (E_linear = sum_e w_e . X_e)."""
        el = self.element_index(numbers)
        x = self.standardized(numbers, self.descriptors(numbers, dm))
        onehot = torch.nn.functional.one_hot(el, len(self.descriptors.elements)).to(x.dtype)
        return torch.einsum("na,...nf->...af", onehot, x)

    def atom_energies(self, numbers, features: torch.Tensor) -> torch.Tensor:
        """(..., n) Hartree per atom from descriptors (..., n, n_features)."""
        el = self.element_index(numbers)
        x = self.standardized(numbers, features)
        linear = (x * self.linear[el]).sum(-1)
        onehot = torch.nn.functional.one_hot(el, len(self.descriptors.elements)).to(x.dtype)
        x = torch.cat([x, onehot.expand(x.shape[:-1] + onehot.shape[-1:])], -1)
        return self.e0[el] + linear + ENERGY_SCALE * self.mlp(x)[..., 0]

    def forward(self, numbers, dm: torch.Tensor) -> torch.Tensor:
        return self.atom_energies(numbers, self.descriptors(numbers, dm)).sum(-1)
