"""Radial basis functions, the smooth cutoff envelope and the radial MLP.

All distances in Bohr. Every function here is smooth in the distance, so forces from autograd are
continuous; the envelope makes anything multiplied by it vanish (with its first ``p`` derivatives) at the
cutoff.

| object | input | output |
|---|---|---|
| ``BesselBasis(n, cutoff)`` | d (E,) Bohr | (E, n): sin(k pi u) / (2 u), u = d / rc, k = 1..n |
| ``PolynomialEnvelope(cutoff, p)`` | d (E,) Bohr | (E,): 1 at d = 0, 0 for d >= rc, C^p smooth |
| ``RadialMLP(n_in, hidden, n_out)`` | (E, n_in) | (E, n_out) |
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BesselBasis", "PolynomialEnvelope", "RadialMLP"]

_SILU_GAIN = 1.679


class BesselBasis(nn.Module):
    """Spherical Bessel functions of order 0 on [0, rc] (DimeNet, NequIP): sin(k pi u) / (2 u), u = d/rc.

    Scaled (1/2 instead of NequIP's 2/rc^2 in units of u) so that the features have root-mean-square
    about 1 over u in [0.1, 1], i.e. unit-scale inputs for the MLPs whatever the cutoff. The frequencies
    are fixed (not trained): a trained frequency buys little on molecules this small and a fixed one
    keeps the basis a pure function of the config.
    """

    def __init__(self, num_basis: int, cutoff: float):
        super().__init__()
        if num_basis < 1:
            raise ValueError("num_basis must be >= 1")
        if cutoff <= 0:
            raise ValueError("cutoff must be positive (Bohr)")
        self.num_basis = int(num_basis)
        self.cutoff = float(cutoff)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        u = (d / self.cutoff)[:, None]
        k = torch.arange(1, self.num_basis + 1, dtype=d.dtype, device=d.device) * math.pi
        return torch.sin(k * u) / (2.0 * u)

    def extra_repr(self) -> str:
        return f"num_basis={self.num_basis}, cutoff={self.cutoff}"


class PolynomialEnvelope(nn.Module):
    """u = d / rc; f(u) = 1 - (p+1)(p+2)/2 u^p + p(p+2) u^(p+1) - p(p+1)/2 u^(p+2) for u < 1, else 0.

    (Klicpera et al., DimeNet.) f and its first p-1 derivatives vanish at u = 1, so the function is
    smooth across the cutoff and ``torch.where`` switching to 0 beyond it does not create a kink.
    """

    def __init__(self, cutoff: float, exponent: int = 6):
        super().__init__()
        if exponent < 2:
            raise ValueError("envelope exponent must be >= 2")
        self.cutoff = float(cutoff)
        self.p = int(exponent)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        p = self.p
        u = (d / self.cutoff).clamp(max=1.0)
        up = u ** p
        f = 1.0 - 0.5 * (p + 1) * (p + 2) * up + p * (p + 2) * up * u - 0.5 * p * (p + 1) * up * u * u
        return torch.where(d < self.cutoff, f, torch.zeros_like(f))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, exponent={self.p}"


class RadialMLP(nn.Module):
    """Invariant MLP: Linear -> SiLU -> ... -> Linear, weights ~ N(0, 1/fan_in), no biases by default.

    No biases (as in NequIP's radial network) keeps the output proportional to the radial basis, which
    itself goes smoothly to 0 where the envelope does. ``bias=True`` is used for MLPs on other invariants.
    """

    def __init__(self, n_in: int, hidden: int, n_out: int, num_hidden_layers: int = 2, bias: bool = False,
                 out_scale: float = 1.0):
        super().__init__()
        dims = [n_in] + [hidden] * num_hidden_layers + [n_out]
        self.linears = nn.ModuleList()
        for i in range(len(dims) - 1):
            lin = nn.Linear(dims[i], dims[i + 1], bias=bias)
            # silu(x) of x ~ N(0, 1) has second moment 0.355: gain 1/sqrt(0.355) after each SiLU
            gain = 1.0 if i == 0 else _SILU_GAIN
            if i == len(dims) - 2:
                gain *= out_scale
            nn.init.normal_(lin.weight, std=gain / math.sqrt(dims[i]))
            if bias:
                nn.init.zeros_(lin.bias)
            self.linears.append(lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, lin in enumerate(self.linears):
            if i > 0:
                x = torch.nn.functional.silu(x)
            x = lin(x)
        return x
