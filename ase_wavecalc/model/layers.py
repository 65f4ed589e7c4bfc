"""Equivariant building blocks in the bond ("edge") frame.

Why an edge frame (eSCN, Passaro & Zitnick, ICML 2023): a tensor product of a feature x^(l1) with the
spherical harmonics Y^(l2)(r_hat) of a bond costs O(L^6) over all paths when done with Clebsch-Gordan
coefficients in the lab frame (NequIP, PhiSNet). Rotate x into a frame where r_hat is the pole (e3nn's y
axis): Y^(l2)(pole) is non-zero only at m = 0, so every path collapses to a sparse map that couples only
components with the same |m| ("SO(2) convolution"), O(L^3) in total. ``SO2Conv`` is exactly this
edge-frame form of the tensor product with Y for every (l1, l2, l3) path allowed by parity, so its weight
space is that of a full tensor product with harmonics of every order.

Layouts (C = channels, D = components of one channel):

* lab frame, "l-order", (..., D, C): for l = 0..lmax, for m = -l..l, for parity (natural (-1)^l first,
  then unnatural when ``parity`` is on). Components are in e3nn's real basis because the network feeds
  e3nn coordinates as r[..., [1, 2, 0]]. The D x C block of one l is contiguous per atom/edge, so a
  rotation is one batched matmul (E, 2l+1, 2l+1) @ (E, 2l+1, P*C) without copies.
* edge frame, "m-order", (D, E, C): components grouped by |m| (all m = 0 first, then +1 and -1, ...),
  component-major so that a channel-shared SO(2) map is one plain GEMM per |m| group,
  (k_out, k_in) @ (k_in, E*C), and a per-irrep channel mixing is one bmm over D.

Both parities (E(3)): 0e, 0o, 1o, 1e, ... ; 0e is component 0 and 0o component 1 in both orders.

Exact constants: Clebsch-Gordan tensors and other fixed arrays are kept as a float64 master copy and as a
non-persistent buffer in the module's dtype; ``ConstantsMixin._apply`` refreshes the buffer from the
master on every ``.to()/.double()/.float()``, so a model built in float32 and moved to float64 carries
exact float64 constants (equivariance to ~1e-13, not ~1e-7). They are not in ``state_dict``: they are a
function of the config.

The SO(2) convolution itself (its path matrices and ``SO2Conv``) is in ``so2.py``.
"""
from __future__ import annotations

import functools
import math

import torch
from torch import nn

__all__ = ["ConstantsMixin", "FeatureLayout", "edge_frame", "WignerD", "rotate_in", "rotate_out",
           "scale_edge", "NodeLinear", "EdgeLinear", "NodeGate", "EdgeGate"]


@functools.lru_cache(maxsize=None)
def _wigner_3j64(l1: int, l2: int, l3: int) -> torch.Tensor:
    from e3nn import o3

    return o3.wigner_3j(l1, l2, l3, dtype=torch.float64)


class ConstantsMixin:
    """Fixed tensors stored exactly (float64 master) and exposed as non-persistent buffers."""

    def register_constant(self, name: str, value: torch.Tensor) -> None:
        if "_const_master" not in self.__dict__:
            self._const_master = {}
        value = torch.as_tensor(value).detach().cpu()
        if value.is_floating_point():
            value = value.to(torch.float64)
            buffer = value.to(torch.get_default_dtype())
        else:
            buffer = value.clone()
        self._const_master[name] = value
        self.register_buffer(name, buffer, persistent=False)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        for name, master in self.__dict__.get("_const_master", {}).items():
            current = self._buffers[name]
            self._buffers[name] = master.to(device=current.device, dtype=current.dtype)
        return out


class FeatureLayout:
    """Irreps of one channel and the index maps between l-order and m-order.

    irreps: tuple of (l, p), natural parity first per l; dim: D; l_blocks[l] = (start, stop, P);
    comp_irrep_l / comp_irrep_m (D,): irrep index of each component in l- / m-order;
    m_perm: l-order index at each m-order position; m_inv: its inverse;
    m_groups: (start, stop) of each |m| group in m-order;
    comp_irm_m (D,): index of the (|m|, irrep) pair of each m-order component (n_irm pairs, sorted by |m|
    then irrep); irm_irrep: irrep of each pair; irm_sizes / group_sizes / group_signs: per |m| group, the
    number of pairs, of components, and 1 (m = 0) or 2 (+m and -m blocks);
    m0_invariant: m-order positions of the m = 0 components that are invariant under the bond's symmetry
    group C_inf_v (natural parity only; unnatural-parity m = 0 components flip sign under mirror planes
    containing the bond); n_scalars: 2 with parity (0e, 0o), else 1.
    """

    def __init__(self, lmax: int, parity: bool = True):
        if lmax < 0:
            raise ValueError("lmax must be >= 0")
        self.lmax = int(lmax)
        self.parity = bool(parity)
        P = 2 if self.parity else 1
        self.n_par = P
        irreps = []
        for l in range(self.lmax + 1):
            irreps.append((l, (-1) ** l))
            if self.parity:
                irreps.append((l, -((-1) ** l)))
        self.irreps = tuple(irreps)
        self.n_irreps = len(irreps)
        comp_irrep, comp_m = [], []
        self.l_blocks = []
        for l in range(self.lmax + 1):
            start = len(comp_irrep)
            for m in range(-l, l + 1):
                for k in range(P):
                    comp_irrep.append(P * l + k)
                    comp_m.append(m)
            self.l_blocks.append((start, len(comp_irrep), P))
        self.dim = len(comp_irrep)
        order, self.m_groups = [], []
        for m in range(self.lmax + 1):
            start = len(order)
            for mm in ((0,) if m == 0 else (m, -m)):
                order += [i for i in range(self.dim) if comp_m[i] == mm]
            self.m_groups.append((start, len(order)))
        self.m_perm = torch.tensor(order, dtype=torch.long)
        self.m_inv = torch.argsort(self.m_perm)
        self.comp_irrep_l = torch.tensor(comp_irrep, dtype=torch.long)
        self.comp_m = torch.tensor(comp_m, dtype=torch.long)
        self.comp_irrep_m = self.comp_irrep_l[self.m_perm]
        m_abs = self.comp_m[self.m_perm].abs()
        # (|m|, irrep) pairs sorted by |m| then irrep: group g of m-order is [+g block, -g block], each
        # block holding the irreps with l >= g in irrep order, i.e. the irm range of group g
        pairs = sorted({(int(m), int(q)) for q, m in zip(self.comp_irrep_m, m_abs)})
        self.n_irm = len(pairs)
        lookup = {mq: i for i, mq in enumerate(pairs)}
        self.comp_irm_m = torch.tensor([lookup[(int(m), int(q))] for q, m in zip(self.comp_irrep_m, m_abs)],
                                       dtype=torch.long)
        self.irm_irrep = torch.tensor([q for _, q in pairs], dtype=torch.long)
        self.irm_sizes = [sum(1 for m, _ in pairs if m == g) for g in range(self.lmax + 1)]
        self.group_sizes = [g1 - g0 for g0, g1 in self.m_groups]
        self.group_signs = [1 if g == 0 else 2 for g in range(self.lmax + 1)]
        for g, (g0, g1) in enumerate(self.m_groups):
            first = sum(self.irm_sizes[:g])
            expected = list(range(first, first + self.irm_sizes[g])) * self.group_signs[g]
            if self.comp_irm_m[g0:g1].tolist() != expected:
                raise RuntimeError("m-order and (|m|, irrep) order disagree")
        inv = []
        for pos in range(self.dim):
            q = int(self.comp_irrep_m[pos])
            l, p = irreps[q]
            if int(m_abs[pos]) == 0 and (not self.parity or p == (-1) ** l):
                inv.append(pos)
        self.m0_invariant = torch.tensor(inv, dtype=torch.long)
        self.n_scalars = P

    def index(self, l: int, p: int) -> int:
        """Position of irrep (l, p) in ``irreps`` (p ignored without parity)."""
        if not self.parity:
            return l
        return self.irreps.index((l, p))

    def irrep_comps(self, q: int) -> list[int]:
        """l-order components of irrep q, in e3nn m order (m = -l..l)."""
        l = self.irreps[q][0]
        start, _, P = self.l_blocks[l]
        k = q - P * l
        return [start + i * P + k for i in range(2 * l + 1)]

    def irreps_str(self, channels: int = 1) -> str:
        """The e3nn irreps of the features (channels copies of each irrep)."""
        return "+".join(f"{channels}x{l}{'e' if p == 1 else 'o'}" for l, p in self.irreps)

    def __repr__(self):
        return f"FeatureLayout(lmax={self.lmax}, parity={self.parity}, dim={self.dim})"


def edge_frame(u: torch.Tensor) -> torch.Tensor:
    """Proper rotations Q (E, 3, 3) with Q @ y_hat = u, smooth in u everywhere (e3nn frame, unit u).

    A single smooth frame field on the sphere does not exist, so two charts are used: for u_y >= 0 the
    Rodrigues rotation taking +y to u, for u_y < 0 the one taking -y to u composed with a rotation by pi
    about z. Each chart is used only on its own hemisphere, where its denominator 1 + |u_y| >= 1, so
    values and autograd gradients are finite everywhere (no Euler angles, no atan2/acos). The two charts
    differ by a rotation about the bond, and everything computed in the edge frame is exactly
    SO(2)-equivariant about the bond, so the network's outputs are identical on both sides of the seam.
    """
    s = torch.where(u[:, 1] >= 0, 1.0, -1.0).to(u.dtype).detach()
    c = s * u[:, 1]
    kx = s * u[:, 2]
    kz = -s * u[:, 0]
    zero = torch.zeros_like(kx)
    K = torch.stack([torch.stack([zero, -kz, zero], -1),          # [k]_x for k = (kx, 0, kz)
                     torch.stack([kz, zero, -kx], -1),
                     torch.stack([zero, kx, zero], -1)], -2)
    eye = torch.eye(3, dtype=u.dtype, device=u.device)
    Q = eye + K + (K @ K) / (1.0 + c)[:, None, None]
    flip = torch.stack([s, s, torch.ones_like(s)], -1)
    return Q * flip[:, None, :]


class WignerD(ConstantsMixin, nn.Module):
    """Real Wigner-D matrices of l = 0..lmax for rotation matrices in e3nn's basis, by recursion.

    D^1 = Q; D^l = U_l^T (D^(l-1) (x) D^1) U_l with U_l = sqrt(2l+1) wigner_3j(l-1, 1, l) (orthonormal
    columns). Polynomial in Q: smooth gradients. Returns [D^0 (E,1,1), D^1 (E,3,3), ..., D^lmax].
    """

    def __init__(self, lmax: int):
        super().__init__()
        self.lmax = int(lmax)
        for l in range(2, self.lmax + 1):
            u = math.sqrt(2 * l + 1) * _wigner_3j64(l - 1, 1, l)
            self.register_constant(f"u{l}", u.reshape(3 * (2 * l - 1), 2 * l + 1))

    def forward(self, Q: torch.Tensor) -> list[torch.Tensor]:
        E = Q.shape[0]
        Ds = [torch.ones(E, 1, 1, dtype=Q.dtype, device=Q.device)]
        if self.lmax >= 1:
            Ds.append(Q)
        for l in range(2, self.lmax + 1):
            prev = Ds[-1]
            n = prev.shape[-1]
            kron = (prev[:, :, None, :, None] * Q[:, None, :, None, :]).reshape(E, 3 * n, 3 * n)
            U = getattr(self, f"u{l}")
            Ds.append(U.T @ kron @ U)
        return Ds


def _rotate_l_blocks(x: torch.Tensor, Ds: list[torch.Tensor], layout: FeatureLayout, transpose: bool):
    E, _, C = x.shape
    parts = []
    sizes = [stop - start for start, stop, _ in layout.l_blocks]
    # torch.split, not slicing: a slice's backward zero-fills a tensor of the full size, per slice
    for l, xl in enumerate(torch.split(x, sizes, 1)):
        if l > 0:
            n, P = 2 * l + 1, layout.l_blocks[l][2]
            D = Ds[l].transpose(1, 2) if transpose else Ds[l]
            xl = torch.bmm(D, xl.reshape(E, n, P * C)).view(E, n * P, C)
        parts.append(xl)
    return torch.cat(parts, 1)


def rotate_in(x: torch.Tensor, Ds: list[torch.Tensor], layout: FeatureLayout) -> torch.Tensor:
    """Lab frame (E, D, C) l-order -> edge frame (D, E, C) m-order: x_edge = D(Q)^T x per irrep."""
    y = _rotate_l_blocks(x.contiguous(), Ds, layout, transpose=True)
    return torch.index_select(y.transpose(0, 1), 0, layout.m_perm.to(x.device))


def rotate_out(x: torch.Tensor, Ds: list[torch.Tensor], layout: FeatureLayout) -> torch.Tensor:
    """Edge frame (D, E, C) m-order -> lab frame (E, D, C) l-order: x = D(Q) x_edge per irrep."""
    y = torch.index_select(x.transpose(0, 1), 1, layout.m_inv.to(x.device))
    return _rotate_l_blocks(y, Ds, layout, transpose=False)


def scale_edge(x: torch.Tensor, s: torch.Tensor, layout: FeatureLayout) -> torch.Tensor:
    """Multiply edge-frame features (D, E, C) m-order by per-(|m|, irrep) scalings s (n_irm, E, C or 1).

    Such scalings commute with rotations about the bond and with its mirror planes (the +m and -m
    components of an irrep get the same factor), so they keep equivariance.
    """
    D, E, C = x.shape
    out = []
    groups = zip(torch.split(x, layout.group_sizes, 0), torch.split(s, layout.irm_sizes, 0))
    for g, (xg, sg) in enumerate(groups):
        k = layout.irm_sizes[g]
        out.append((xg.view(layout.group_signs[g], k, E, C) * sg).view(layout.group_signs[g] * k, E, C))
    return torch.cat(out, 0)


class _IrrepLinearBase(ConstantsMixin, nn.Module):
    def __init__(self, layout: FeatureLayout, c_in: int, c_out: int, comp: torch.Tensor, bias: bool,
                 init_scale: float):
        super().__init__()
        self.layout, self.c_in, self.c_out = layout, int(c_in), int(c_out)
        self.irreps_in = layout.irreps_str(c_in)
        self.irreps_out = layout.irreps_str(c_out)
        self.weight = nn.Parameter(torch.randn(layout.n_irreps, c_in, c_out) * (init_scale / math.sqrt(c_in)))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.register_constant("comp_irrep", comp)


class NodeLinear(_IrrepLinearBase):
    """Channel mixing within each irrep, lab frame: (N, D, C_in) l-order -> (N, D, C_out); bias on 0e.

    Commutes with rotations and parity. Weights ~ N(0, 1/C_in).
    """

    def __init__(self, layout, c_in, c_out, bias=False, init_scale=1.0):
        super().__init__(layout, c_in, c_out, layout.comp_irrep_l, bias, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.einsum("ndc,dck->ndk", x, self.weight[self.comp_irrep])
        if self.bias is not None:
            out = torch.cat([out[:, :1] + self.bias, out[:, 1:]], 1)
        return out


class EdgeLinear(_IrrepLinearBase):
    """Channel mixing within each irrep, edge frame: (D, E, C_in) m-order -> (D, E, C_out); bias on 0e."""

    def __init__(self, layout, c_in, c_out, bias=False, init_scale=1.0):
        super().__init__(layout, c_in, c_out, layout.comp_irrep_m, bias, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.bmm(x, self.weight[self.comp_irrep])
        if self.bias is not None:
            out = torch.cat([out[:1] + self.bias, out[1:]], 0)
        return out


class _GateBase(ConstantsMixin, nn.Module):
    def __init__(self, layout: FeatureLayout, channels: int, comp: torch.Tensor):
        super().__init__()
        self.layout, self.channels = layout, int(channels)
        self.irreps_in = self.irreps_out = layout.irreps_str(channels)
        ns = layout.n_scalars
        self.n_gated = layout.n_irreps - ns
        self.register_constant("gate_index", comp[ns:] - ns)
        # the gate of each gated component as a 0/1 matrix (D - ns, n_gated): spreading the gates by a product
        # with it instead of indexing them by gate_index gives the same numbers, and torch.compile (inductor,
        # torch 2.13, CPU) differentiates it correctly, where the indexed form's backward came out wrong
        if self.n_gated:
            spread = torch.nn.functional.one_hot(comp[ns:] - ns, self.n_gated)
            self.register_constant("gate_spread", spread.double())
        n_out = channels * max(self.n_gated, 1)
        self.weight = nn.Parameter(torch.randn(channels, n_out) / math.sqrt(channels))
        self.bias = nn.Parameter(torch.zeros(channels * max(self.n_gated, 1)))

    def _gates(self, s):  # s (n, C) -> (n, n_gated, C)
        return torch.sigmoid(s @ self.weight + self.bias).view(s.shape[0], self.n_gated, self.channels)


class NodeGate(_GateBase):
    """SiLU on 0e, tanh on 0o (odd: keeps parity), l > 0 irreps of channel c scaled by a sigmoid of a
    linear function of the 0e scalars (e3nn Gate idea). (N, D, C) l-order -> same."""

    def __init__(self, layout, channels):
        super().__init__(layout, channels, layout.comp_irrep_l)

    def forward(self, x):
        ns = self.layout.n_scalars
        parts = [torch.nn.functional.silu(x[:, :1])]
        if ns == 2:
            parts.append(torch.tanh(x[:, 1:2]))
        if self.n_gated:
            parts.append(x[:, ns:] * torch.einsum("ngc,dg->ndc", self._gates(x[:, 0]), self.gate_spread))
        return torch.cat(parts, 1)


class EdgeGate(_GateBase):
    """``NodeGate`` for edge-frame features (D, E, C) m-order (0e, 0o are rows 0, 1 there too)."""

    def __init__(self, layout, channels):
        super().__init__(layout, channels, layout.comp_irrep_m)

    def forward(self, x):
        ns = self.layout.n_scalars
        parts = [torch.nn.functional.silu(x[:1])]
        if ns == 2:
            parts.append(torch.tanh(x[1:2]))
        if self.n_gated:
            parts.append(x[ns:] * torch.einsum("egc,dg->dec", self._gates(x[0]), self.gate_spread))
        return torch.cat(parts, 0)
