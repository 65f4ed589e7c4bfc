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
  thermal MD have none). A first-order linear-response density around detached orbitals (stable second
  derivatives) was tried instead: its weight gradient of the force loss had a cosine of only 0.25-0.5
  with the exact one on ethanol, because the curvature of P that it omits is not small.
"""
from __future__ import annotations

import numpy as np
import torch

from . import electronic, integrals
from .validation import n_occupied   # one closed-shell check for the package (re-exported here)

__all__ = ["electronic_energy", "density_from_eigh", "one_electron_matrices", "total_energy", "n_occupied"]


def electronic_energy(dm: torch.Tensor, fock: torch.Tensor, core: torch.Tensor) -> torch.Tensor:
    """1/2 Tr[P (F + h)] in Hartree; arrays (..., nao, nao), result (...)."""
    return 0.5 * (dm * (fock + core)).sum(dim=(-2, -1))


def density_from_eigh(fock: torch.Tensor, overlap: torch.Tensor, n_occ: int) -> torch.Tensor:
    """P = 2 C_occ C_occ^T through ``torch.linalg.eigh`` autograd (twice differentiable; training only)."""
    _, mo_coeff = electronic.solve_fock(fock, overlap)
    c_occ = mo_coeff[..., :n_occ]
    return 2.0 * c_occ @ c_occ.transpose(-1, -2)


def one_electron_matrices(numbers, positions_bohr: torch.Tensor, basis: str, derivative_order: int = 1,
                          mol=None):
    """Overlap S and core Hamiltonian h_core (nao, nao) as differentiable functions of the positions.

    ``derivative_order=1`` (default): S and h are built as their first-order expansion around the
    current positions, ``M0 + sum_Ax dM/dR_Ax (R - R0)_Ax`` with ``R0`` a detached copy. Value and first
    derivative are exact; second derivatives with respect to the positions are zero. That is all forces,
    and a force loss in training, need, and it keeps ``loss.backward()`` from computing second-derivative
    integrals. ``derivative_order=2``: the autograd ops of :mod:`integrals` (exact to second order, e.g.
    for Hessians by double autograd).
    """
    if derivative_order == 2 or not positions_bohr.requires_grad:
        return (integrals.overlap_torch(numbers, positions_bohr, basis),
                integrals.core_hamiltonian_torch(numbers, positions_bohr, basis))
    if derivative_order != 1:
        raise ValueError(f"derivative_order must be 1 or 2, got {derivative_order}")
    kw = dict(dtype=positions_bohr.dtype, device=positions_bohr.device)
    if mol is None:  # a PySCF Mole at exactly these positions may be passed in to save building one
        mol = integrals.make_mol(numbers, positions_bohr.detach().cpu().numpy(), basis)
    delta = positions_bohr - positions_bohr.detach()
    matrices = []
    for value, derivative in ((integrals.overlap, integrals.overlap_derivative),
                              (integrals.core_hamiltonian, integrals.core_hamiltonian_derivative)):
        m0 = torch.as_tensor(value(mol), **kw)
        dm = torch.as_tensor(derivative(mol), **kw)
        matrices.append(m0 + torch.einsum("ax,axij->ij", delta, dm))
    return tuple(matrices)


def total_energy(numbers, positions_bohr: torch.Tensor, fock: torch.Tensor, basis: str,
                 delta_hcore: torch.Tensor | None = None, atomic_energy_sum: torch.Tensor | float = 0.0,
                 charge: int = 0, density: str = "projector", derivative_order: int = 1, mol=None
                 ) -> tuple[torch.Tensor, dict]:
    """Total energy (Hartree, 0-dim tensor) of one molecule and the intermediate matrices.

    E = E_nn + 1/2 Tr[P (F + h + Delta h)] + ``atomic_energy_sum``. ``positions_bohr`` (n, 3) should
    require grad when forces are wanted; ``fock`` and ``delta_hcore`` (the correction Delta h to the core
    Hamiltonian h), (nao, nao) Hartree, are the network outputs at those positions (PySCF AO order);
    ``atomic_energy_sum`` (Hartree, 0-dim): the network output of that name (sum_A e0[Z_A] plus the
    learned per-atom correction).
    Everything is evaluated in float64 (inputs of lower precision are promoted): total energies are
    hundreds of Hartree and are wanted to micro-Hartree. ``derivative_order``: see
    :func:`one_electron_matrices`; ``mol``: an optional PySCF Mole at these positions (reused).
    Returns ``(e_tot, parts)`` with ``parts`` holding ``dm``, ``overlap``, ``hcore``, ``e_nuc``,
    ``e_elec`` (float64 tensors).
    """
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    positions = positions_bohr.to(torch.float64)
    fock = fock.to(torch.float64)
    if delta_hcore is not None:
        delta_hcore = delta_hcore.to(torch.float64)
    if torch.is_tensor(atomic_energy_sum):
        atomic_energy_sum = atomic_energy_sum.to(torch.float64)
    if mol is None:
        mol = integrals.make_mol(numbers, positions.detach().cpu().numpy(), basis, charge=charge)
    overlap, hcore = one_electron_matrices(numbers, positions, basis, derivative_order, mol=mol)
    core = hcore if delta_hcore is None else hcore + delta_hcore
    n_occ = n_occupied(numbers, charge, mol=mol)
    if density == "projector":
        dm = electronic.closed_shell_density(fock, overlap, n_occ)
    elif density == "eigh":
        dm = density_from_eigh(fock, overlap, n_occ)
    else:
        raise ValueError(f"density must be 'projector' or 'eigh', got {density!r}")
    e_nuc = integrals.nuclear_repulsion(numbers, positions)
    e_elec = electronic_energy(dm, fock, core)
    e_tot = e_nuc + e_elec + atomic_energy_sum
    return e_tot, {"dm": dm, "overlap": overlap, "hcore": hcore, "e_nuc": e_nuc, "e_elec": e_elec}
