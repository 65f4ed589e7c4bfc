"""Pieces of the readout energy (``energy_path = "readout"``): invariant atom descriptors and their fixed
standardization. Shapes: atom features (N, D, C) in l-order (``layers.FeatureLayout``); descriptors (N, M).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["atom_invariants", "Standardize"]


def atom_invariants(layers, irrep_of_component: torch.Tensor, n_irreps: int) -> torch.Tensor:
    """(N, len(layers) * C * (1 + n_irreps)) rotation- and inversion-invariant atom descriptors: per block
    output (N, D, C), the 0e channels and the squared norm of every (irrep, channel) (smooth at zero,
    unlike a norm). ``irrep_of_component`` (D,) gives each component's irrep index."""
    parts = []
    for h in layers:
        sq = h.new_zeros(h.shape[0], n_irreps, h.shape[2]).index_add_(1, irrep_of_component, h.square())
        parts += [h[:, 0, :], sq.flatten(1)]
    return torch.cat(parts, 1)


class Standardize(nn.Module):
    """x -> (x - shift) * scale with fixed per-feature buffers (saved with the weights; identity at first)."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("shift", torch.zeros(n))
        self.register_buffer("scale", torch.ones(n))

    def set_statistics(self, x: torch.Tensor) -> None:
        """Shift and scale from samples x (M, n): mean and 1 / (std + 1e-3 * the largest std)."""
        x = x.detach().to(self.shift)
        std = x.std(0)
        self.shift.copy_(x.mean(0))
        self.scale.copy_(1.0 / (std + 1e-3 * float(std.max())))

    def forward(self, x):
        return (x - self.shift) * self.scale
