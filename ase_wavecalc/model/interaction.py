"""The message-passing block of the atom trunks (the Fock trunk and the optional energy trunk) and the
edge-frame scalings it shares with the pair features (``network.PairFeatures``).

| name | maps | irreps |
|---|---|---|
| ``ScaleHead(r)`` | invariant MLP outputs (E, n) -> per-(abs m, irrep, channel) scalings (n_irm, E, C) | invariant |
| ``Interaction(h, ...)`` | atom features (N, D, C) -> (N, D, C), l-order | C x layout in = out |
| ``run_blocks(...)`` | element embeddings -> every block's output (N, D, C) | C x layout |
| ``EdgeContext`` | what every block of a molecule batch shares: matrix index, Wigner-D of the bond frames, edge attributes, envelope, element one-hot, edge lengths; the Fock trunk's descriptors where a phase gives them | |
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .layers import ConstantsMixin, FeatureLayout, NodeGate, NodeLinear, rotate_in, rotate_out
from .radial import RadialMLP
from .so2 import SO2Conv

__all__ = ["EdgeContext", "Interaction", "ScaleHead", "run_blocks"]

_SQRT_HALF = math.sqrt(0.5)


class EdgeContext(NamedTuple):
    """The per-batch quantities every trunk block and energy readout reads (``HamiltonianModel.forward``)."""

    ix: object                 # blocks.MatrixIndex: edges (src, dst), element index per atom, batch, ...
    Ds: list                   # Wigner-D matrices of the bond frames, one (E, 2l+1, 2l+1) per l
    edge_attr: torch.Tensor    # (E, num_radial + 2 n_elements): Bessel functions, both elements one-hot
    env: torch.Tensor          # (E,) the envelope at the message-passing cutoff
    onehot: torch.Tensor       # (N, n_elements) element of each atom
    d: torch.Tensor            # (E,) edge lengths (Bohr)
    # (N, M) the Fock trunk's invariant atom descriptors where a training phase supplies them (a frozen trunk's,
    # computed once per frame: train/frozen_trunk.py); None: the readout computes them from the trunk
    fock_invariants: torch.Tensor | None = None


class ScaleHead(ConstantsMixin, nn.Module):
    """Invariant MLP outputs -> per-(|m|, irrep, channel) edge-frame scalings (n_irm, E, C).

    s[(|m|, q), c] = a[q, c] * b[(|m|, q)]: a per (irrep, channel) factor times a channel-shared
    per-(|m|, irrep) factor (C * n_irreps + n_irm numbers per edge instead of C * n_irm). Both are
    invariant under rotations about the bond and its mirror planes, so scaling edge-frame features by
    them keeps equivariance; the |m| factor gives sigma (m = 0), pi (|m| = 1), delta ... couplings their
    own distance dependence.
    """

    def __init__(self, layout: FeatureLayout, channels: int):
        super().__init__()
        self.layout, self.channels = layout, int(channels)
        self.size = self.channels * layout.n_irreps + layout.n_irm
        self.register_constant("irm_irrep", layout.irm_irrep)

    def forward(self, r: torch.Tensor, env: torch.Tensor | None = None) -> torch.Tensor:
        E, C, nq = r.shape[0], self.channels, self.layout.n_irreps
        a, b = torch.split(r, [C * nq, self.layout.n_irm], 1)
        if env is not None:
            b = b * env[:, None]
        return a.view(E, nq, C).transpose(0, 1).index_select(0, self.irm_irrep) * b.T[:, :, None]

    def scalar(self, r: torch.Tensor, env: torch.Tensor | None = None) -> torch.Tensor:
        """The (m = 0, 0e) row of ``forward`` only: (E, C)."""
        C = self.channels
        a, b = torch.split(r, [C, r.shape[1] - C], 1)
        b = b[:, :1] if env is None else b[:, :1] * env[:, None]  # (0, 0e) is pair 0
        return a * b


class Interaction(nn.Module):
    """One message-passing block: h (N, D, C) l-order -> (N, D, C). irreps_in = irreps_out = C x layout.

    message_ij = D(Q_ij) [ S_out * SO2Conv( S_in * D(Q_ij)^T Linear(h_j) ) ], S = radial scalings
    (``_ScaleHead`` of an MLP of Bessel functions; the envelope multiplies S_in, so messages vanish
    smoothly at the cutoff); h_i <- h_i + Gate(Linear(sum_j message_ij / sqrt(avg_num_neighbors))
    + Linear(h_i)).
    """

    def __init__(self, layout: FeatureLayout, channels: int, num_radial: int, radial_hidden: int,
                 avg_num_neighbors: float, n_elements: int):
        super().__init__()
        self.layout, self.channels = layout, channels
        self.irreps_in = self.irreps_out = layout.irreps_str(channels)
        self.lin_pre = NodeLinear(layout, channels, channels)
        self.scale_in = ScaleHead(layout, channels)
        self.scale_out = ScaleHead(layout, channels)
        # edge MLP of the Bessel functions and both elements (one-hot): element-pair-dependent radial
        # functions. Not of the features themselves: the scalings multiply the features, and a feedback of
        # the features into their own scale made activations explode with depth.
        self.radial = RadialMLP(num_radial + 2 * n_elements, radial_hidden, 2 * self.scale_in.size)
        self.conv = SO2Conv(layout, channels)
        self.lin_post = NodeLinear(layout, channels, channels, init_scale=0.1)
        self.lin_self = NodeLinear(layout, channels, channels)
        self.gate = NodeGate(layout, channels)
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(self, h, Ds, edge_attr, env, src, dst, scalar_input: bool = False):
        x = self.lin_pre(h)
        r_in, r_out = torch.split(self.radial(edge_attr), self.scale_in.size, 1)
        s_out = self.scale_out(r_out)
        if scalar_input:  # only 0e is non-zero (and rotation-invariant): skip the rotation in
            mt = self.conv.forward_scalar(x[:, 0][src] * self.scale_in.scalar(r_in, env), s_out)
        else:
            mt = self.conv(rotate_in(x[src], Ds, self.layout), self.scale_in(r_in, env), s_out)
        m = rotate_out(mt, Ds, self.layout)
        agg = torch.zeros_like(h).index_add_(0, dst, m) * self.norm
        return h + self.gate((self.lin_post(agg) + self.lin_self(h)) * _SQRT_HALF)


def run_blocks(embedding, blocks, layout, ix, Ds, edge_attr, env) -> list:
    """A message-passing trunk from element embeddings (n_elements, C): every block's output (N, D, C)."""
    x0 = embedding[ix.elem]
    h = torch.cat([x0[:, None, :], x0.new_zeros(x0.shape[0], layout.dim - 1, x0.shape[1])], 1)
    layers = []
    for k, block in enumerate(blocks):
        h = block(h, Ds, edge_attr, env, ix.src, ix.dst, scalar_input=(k == 0))
        layers.append(h)
    return layers
