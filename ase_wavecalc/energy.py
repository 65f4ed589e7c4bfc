"""Total energy of a molecule from a (predicted) Hamiltonian, and its exact gradient.

    E = E_nn(R) + 1/2 Tr[P (F + h)] + sum_A e0[Z_A]

| symbol | meaning | shape | unit |
|---|---|---|---|
| F | Fock / Kohn-Sham matrix (network output) | (nao, nao) | Hartree |
| S | overlap, exact from PySCF integrals | (nao, nao) | - |
| P | closed-shell density matrix 2 C_occ C_occ^T, F C = S C eps | (nao, nao) | - |
| h | h_core(R) exact from PySCF + Delta h (network's second head) | (nao, nao) | Hartree |
| E_nn | nuclear repulsion | () | Hartree |
| e0 | per-element energy offsets (network parameters) | () | Hartree |

For Hartree-Fock with h = h_core this is the exact HF energy (sum over occupied orbitals of eps_i + h_ii,
PhiSNet's form); for DFT, Delta h and e0 learn the exchange-correlation double counting, so the result is
the absolute total energy of the reference method, comparable with PySCF's ``e_tot``.

Gradients: every term is a torch function of the positions (network, S and h_core through autograd ops
whose backward uses PySCF's analytic derivative integrals, E_nn in closed form), so forces are the exact
negative gradient. Two density-matrix back-ends give the same P:

* ``"projector"`` (inference): :func:`electronic.closed_shell_density`, whose backward uses only
  occupied-virtual couplings, so forces stay finite and right when orbitals are degenerate
  (symmetric molecules), as long as the HOMO-LUMO gap is open;
* ``"eigh"`` (training with a force loss): plain ``torch.linalg.eigh`` autograd, which supports the
  second derivatives a force loss needs but is unstable at exact degeneracies (training geometries from
  thermal MD have none).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import electronic, integrals

__all__ = ["electronic_energy", "density_from_eigh", "total_energy", "n_occupied"]


def n_occupied(numbers: Sequence[int], charge: int = 0) -> int:
    """Number of doubly occupied orbitals of a closed-shell molecule; error for an odd electron count."""
    n_elec = int(np.sum(numbers)) - int(charge)
    if n_elec <= 0 or n_elec % 2:
        raise ValueError(f"{n_elec} electrons: only closed-shell molecules (even electron count) are supported")
    return n_elec // 2


def electronic_energy(dm: torch.Tensor, fock: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
    """1/2 Tr[P (F + h)] in Hartree; arrays (..., nao, nao), result (...)."""
    return 0.5 * (dm * (fock + core)).sum(dim=(-2, -1))


def density_from_eigh(fock: torch.Tensor, overlap: torch.Tensor, n_occ: int) -> torch.Tensor:
    """P = 2 C_occ C_occ^T through ``torch.linalg.eigh`` autograd (twice differentiable; training only)."""
    _, mo_coeff = electronic.solve_fock(fock, overlap)
    c_occ = mo_coeff[..., :n_occ]
    return 2.0 * c_occ @ c_occ.transpose(-1, -2)


def total_energy(numbers, positions_bohr: torch.Tensor, fock: torch.Tensor, basis: str,
                 core_correction: torch.Tensor | None = None, atom_energy: torch.Tensor | float = 0.0,
                 charge: int = 0, density: str = "projector") -> tuple[torch.Tensor, dict]:
    """Total energy (Hartree, 0-dim tensor) of one molecule and the intermediate matrices.

    ``positions_bohr`` (n, 3) should require grad when forces are wanted; ``fock`` and
    ``core_correction`` (nao, nao) are the network outputs at those positions (PySCF AO order).
    Returns ``(e_tot, parts)`` with ``parts`` holding ``dm``, ``overlap``, ``hcore``, ``e_nuc``,
    ``e_elec`` (tensors in the dtype of ``fock``).
    """
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    dtype = fock.dtype
    positions = positions_bohr.to(dtype)
    overlap = integrals.overlap_torch(numbers, positions, basis)
    hcore = integrals.core_hamiltonian_torch(numbers, positions, basis)
    core = hcore if core_correction is None else hcore + core_correction
    n_occ = n_occupied(numbers, charge)
    if density == "projector":
        dm = electronic.closed_shell_density(fock, overlap, n_occ)
    elif density == "eigh":
        dm = density_from_eigh(fock, overlap, n_occ)
    else:
        raise ValueError(f"density must be 'projector' or 'eigh', got {density!r}")
    e_nuc = integrals.nuclear_repulsion(numbers, positions)
    e_elec = electronic_energy(dm, fock, core)
    e_tot = e_nuc + e_elec + atom_energy
    return e_tot, {"dm": dm, "overlap": overlap, "hcore": hcore, "e_nuc": e_nuc, "e_elec": e_elec}
