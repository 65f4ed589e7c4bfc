"""The SO(2) convolution: the edge-frame form of the tensor product with the spherical harmonics of a bond.

In the edge frame (``layers.py``) every (l1, l2, l3) path of x^(l1) (x) Y^(l2)(pole) couples only components
with the same |m|. ``so2_paths`` finds, for a feature layout, a canonical basis of all such maps that commute
with rotations about the bond axis (and, with both parities, with the reflection that keeps the axis), from
the Wigner-D matrices of a few test rotations; ``SO2Conv`` applies one learned combination of them per
|m| group, with weights shared by the channels.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

from .layers import ConstantsMixin, FeatureLayout, _wigner_3j64, scale_edge

__all__ = ["SO2Conv", "so2_paths"]


def _wigner_d64(lmax: int, R: torch.Tensor) -> list[torch.Tensor]:
    """Wigner-D (e3nn basis) of one float64 rotation matrix for l = 0..lmax, same recursion as WignerD."""
    Ds = [torch.ones(1, 1, dtype=torch.float64), R]
    for l in range(2, lmax + 1):
        U = math.sqrt(2 * l + 1) * _wigner_3j64(l - 1, 1, l).reshape(3 * (2 * l - 1), 2 * l + 1)
        Ds.append(U.T @ torch.kron(Ds[-1], R) @ U)
    return Ds[: lmax + 1]


def _canonical_basis(rows: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """A basis of the span of ``rows`` (k, n) that depends only on the subspace, not on which basis
    LAPACK returned: Gram-Schmidt on the projections of the unit vectors e_0, e_1, ... in order.

    An SVD null space is defined only up to sign (and, for k > 1, a rotation), and LAPACK's choice varies
    with the thread count and CPU: weights trained in one gauge would be wrong in another. With this
    basis each vector's first significant component is positive and the result is reproducible."""
    if rows.shape[0] == 0:
        return rows
    proj = rows.T @ rows                     # (n, n) projector onto the span
    basis = []
    for i in range(proj.shape[0]):
        v = proj[:, i].clone()
        for b in basis:
            v = v - (b @ v) * b
        norm = float(v.norm())
        if 1e-10 < norm < 1e-2:   # measured: accepted >= 0.7, rejected ~1e-15; keep that gap loud
            raise RuntimeError(f"ambiguous pivot ({norm:.1e}) in the canonical SO(2) path basis")
        if norm > tol:
            basis.append(v / norm)
            if len(basis) == rows.shape[0]:
                break
    if len(basis) != rows.shape[0]:
        raise RuntimeError("could not build a canonical basis of an SO(2) path space")
    return torch.stack(basis)


@functools.lru_cache(maxsize=None)
def _so2_paths_cached(lmax: int, parity: bool):
    layout = FeatureLayout(lmax, parity)

    def rot_y(phi):
        c, s = math.cos(phi), math.sin(phi)
        return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)

    # generic rotations about the bond (y) and, with parity, the mirror plane z -> -z (inversion o C2(z))
    group = [(_wigner_d64(lmax, rot_y(0.7)), None), (_wigner_d64(lmax, rot_y(1.9)), None)]
    if parity:
        c2z = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
        group.append((_wigner_d64(lmax, c2z), "parity"))
    raw = []
    for b, (l3, p3) in enumerate(layout.irreps):
        for a, (l1, p1) in enumerate(layout.irreps):
            n1, n3 = 2 * l1 + 1, 2 * l3 + 1
            cons = []
            for Ds, kind in group:
                D1, D3 = Ds[l1], Ds[l3]
                if kind == "parity":
                    D1, D3 = p1 * D1, p3 * D3
                # row convention out = x @ W: equivariance D1^T W = W D3^T, vec(A W B) = (A kron B^T) vec(W)
                cons.append(torch.kron(D1.T.contiguous(), torch.eye(n3, dtype=torch.float64))
                            - torch.kron(torch.eye(n1, dtype=torch.float64), D3))
            cons = torch.cat(cons, 0)
            for m in range(min(l1, l3) + 1):
                idx = [i * n3 + j for i in range(n1) for j in range(n3)
                       if abs(i - l1) == m and abs(j - l3) == m]
                sub = cons[:, idx]
                _, sv, vh = torch.linalg.svd(sub)   # sub has more rows than columns: vh is square
                null = _canonical_basis(vh[int((sv > 1e-9).sum()):])
                for v in null:
                    M = torch.zeros(n1 * n3, dtype=torch.float64)
                    M[idx] = v
                    raw.append((a, b, m, M.view(n1, n3)))
    # normalize: every output component gets unit second moment from unit inputs and N(0, 1) weights
    count: dict = {}
    for a, b, m, M in raw:
        count[(b, m)] = count.get((b, m), 0) + 1
    paths = []
    for a, b, m, M in raw:
        col = M.square().sum(0)
        col = col[col > 1e-12].mean()
        paths.append((a, b, m, M / torch.sqrt(col * count[(b, m)])))
    return paths


def so2_paths(layout: FeatureLayout):
    """Basis of the linear maps, edge frame, from irrep (l1, p1) to (l3, p3) that commute with rotations
    about the bond and (with parity) with the mirror planes containing it: one element per |m| <=
    min(l1, l3) and per SO(2) type. This space is exactly the span of the tensor-product paths
    (l1, p1) x Y^(l2)(r_hat) -> (l3, p3) over all l2 (eSCN), found numerically as a null space (faster
    than building wigner_3j up to l2 = 2 lmax). Returns (irrep_in, irrep_out, |m|, M (2l1+1, 2l3+1)),
    scaled so each output component has unit second moment for unit inputs and N(0, 1) weights.
    """
    return _so2_paths_cached(layout.lmax, layout.parity)


class SO2Conv(ConstantsMixin, nn.Module):
    """Edge-frame tensor product with Y(r_hat), shared by all channels: (D, E, C) -> (D, E, C), m-order.

    W = sum_paths w[path] M_path is block-diagonal over |m| groups; out_g = W_g^T @ x_g.view(k, E*C) is
    one GEMM per group (O(L^3) per channel instead of O(L^6)). The weights are shared by the channels;
    channel dependence comes from per-(channel, irrep) and per-(irrep, |m|) scalings around it (see
    ``network.Interaction``), which keeps the GEMMs large (2 CPU cores: a channel-wise product needs a
    transpose of the whole edge tensor per layer and ran ~2x slower here). Exactly SO(2)-equivariant
    about the bond (and O(2) with parity), hence the message is SO(3)/O(3) equivariant.
    """

    def __init__(self, layout: FeatureLayout, channels: int | None = None):
        super().__init__()
        self.layout = layout
        self.irreps_in = self.irreps_out = layout.irreps_str(channels or 1)
        paths = so2_paths(layout)
        D = layout.dim
        m_pos = layout.m_inv  # l-order index -> m-order position
        flat, pid, val = [], [], []
        for k, (a, b, _l2, M) in enumerate(paths):
            ca, cb = layout.irrep_comps(a), layout.irrep_comps(b)
            for i, j in torch.nonzero(M.abs() > 1e-12).tolist():
                flat.append(int(m_pos[ca[i]]) * D + int(m_pos[cb[j]]))
                pid.append(k)
                val.append(float(M[i, j]))
        self.n_paths = len(paths)
        self.weight = nn.Parameter(torch.randn(self.n_paths))
        self.register_constant("flat_index", torch.tensor(flat, dtype=torch.long))
        self.register_constant("path_index", torch.tensor(pid, dtype=torch.long))
        self.register_constant("values", torch.tensor(val, dtype=torch.float64))
        group_of = torch.zeros(D, dtype=torch.long)
        for g, (g0, g1) in enumerate(layout.m_groups):
            group_of[g0:g1] = g
        rows, cols = self.flat_index // D, self.flat_index % D
        if not torch.equal(group_of[rows], group_of[cols]):
            raise RuntimeError("an SO(2) path couples different |m|: edge-frame convention broken")

    def weight_matrix(self) -> torch.Tensor:
        """W (D, D) in m-order: out[j] = sum_k W[k, j] x[k]."""
        D = self.layout.dim
        w = self.weight[self.path_index] * self.values
        return torch.zeros(D * D, dtype=w.dtype, device=w.device).index_add(0, self.flat_index, w).view(D, D)

    def forward(self, x: torch.Tensor, s_in: torch.Tensor | None = None,
                s_out: torch.Tensor | None = None) -> torch.Tensor:
        """x (D, E, C) m-order; optional per-(|m|, irrep) scalings (n_irm, E, C or 1) before and after."""
        D, E, C = x.shape
        L = self.layout
        W = self.weight_matrix()
        xs = torch.split(x, L.group_sizes, 0)
        s_in = torch.split(s_in, L.irm_sizes, 0) if s_in is not None else None
        s_out = torch.split(s_out, L.irm_sizes, 0) if s_out is not None else None
        outs = []
        for g, (g0, g1) in enumerate(L.m_groups):
            ns, k = L.group_signs[g], L.irm_sizes[g]
            xg = xs[g]
            if s_in is not None:
                xg = xg.view(ns, k, E, C) * s_in[g]
            yg = W[g0:g1, g0:g1].T @ xg.reshape(g1 - g0, E * C)
            if s_out is not None:
                yg = yg.view(ns, k, E, C) * s_out[g]
            outs.append(yg.reshape(g1 - g0, E, C))
        return torch.cat(outs, 0)

    def forward_scalar(self, s: torch.Tensor, s_out: torch.Tensor | None = None) -> torch.Tensor:
        """``forward`` for an input that is zero except 0e (which is rotation invariant): s (E, C)."""
        W = self.weight_matrix()
        y = W[0][:, None, None] * s[None]
        return y if s_out is None else scale_edge(y, s_out, self.layout)
