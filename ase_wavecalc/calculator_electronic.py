"""The electronic-structure accessors of :class:`~ase_wavecalc.WaveCalculator` (a mixin): orbital energies,
occupations, HOMO/LUMO, the matrices F, h, S, P, C in atomic units and PySCF AO order, and the electron
density on points, on a box and as a cube file. Each reads the last geometry's HamiltonianResult through
the calculator's ``_electronic()`` (which computes it first if needed); the table of units is in the
``calculator`` module docstring.
"""
from __future__ import annotations

import numpy as np

from . import electronic
from .units import BOHR, hartree_to_ev

__all__ = ["ElectronicStructureMixin"]


class ElectronicStructureMixin:
    """Methods of WaveCalculator that read its last HamiltonianResult (``self._electronic()``)."""

    # -- electronic structure, ASE names ---------------------------------------------------------
    def get_number_of_spins(self):
        return 1

    def get_spin_polarized(self):
        return False

    def get_number_of_bands(self):
        return int(len(self._electronic().mo_energy))

    def get_ibz_k_points(self):
        return np.zeros((1, 3))

    def get_k_point_weights(self):
        return np.ones(1)

    @staticmethod
    def _check_kpt_spin(kpt, spin):
        if kpt != 0 or spin != 0:
            raise IndexError(f"a molecule has one k-point (kpt=0) and one spin channel (spin=0); got "
                             f"kpt={kpt}, spin={spin}")

    def get_eigenvalues(self, kpt=0, spin=0):
        """Orbital energies (nmo,) in eV, ascending."""
        self._check_kpt_spin(kpt, spin)
        return hartree_to_ev(np.array(self._electronic().mo_energy, dtype=float))

    def get_occupation_numbers(self, kpt=0, spin=0):
        """Occupations (nmo,): 2 for occupied orbitals, 0 otherwise (closed shell, spin-summed)."""
        self._check_kpt_spin(kpt, spin)
        return np.array(self._electronic().mo_occ, dtype=float)

    def get_number_of_electrons(self):
        return float(np.sum(self._electronic().mo_occ))

    def get_homo_lumo(self):
        """(HOMO, LUMO) orbital energies in eV (NaN LUMO if the basis has no virtual orbital)."""
        res = self._electronic()
        homo, lumo = electronic.homo_lumo(_torch(res.mo_energy), res.n_occ)
        return hartree_to_ev(float(homo)), hartree_to_ev(float(lumo))

    def get_homo_lumo_gap(self):
        homo, lumo = self.get_homo_lumo()
        return lumo - homo

    def get_fermi_level(self):
        """Mid-gap energy (HOMO + LUMO) / 2 in eV: the zero-temperature convention for a gapped molecule."""
        homo, lumo = self.get_homo_lumo()
        return 0.5 * (homo + lumo)

    # -- matrices in atomic units, PySCF AO order ------------------------------------------------
    def get_hamiltonian(self):
        """Kohn-Sham/Fock matrix F (nao, nao) in Hartree, PySCF spherical AO order."""
        return np.array(self._electronic().fock, dtype=float)

    def get_core_hamiltonian(self):
        """Core Hamiltonian h (nao, nao) in Hartree (None if the provider does not give it)."""
        hcore = self._electronic().hcore
        return None if hcore is None else np.array(hcore, dtype=float)

    def get_overlap(self):
        """AO overlap matrix S (nao, nao)."""
        return np.array(self._electronic().overlap, dtype=float)

    def get_density_matrix(self):
        """Density matrix P (nao, nao) with Tr[P S] = number of electrons."""
        return np.array(self._electronic().dm, dtype=float)

    def get_mo_coefficients(self):
        """Orbital coefficients C (nao, nmo), columns, C^T S C = 1."""
        return np.array(self._electronic().mo_coeff, dtype=float)

    def get_pyscf_mol(self):
        """The ``pyscf.gto.Mole`` of the last calculation (Bohr), e.g. for further integrals."""
        return self._electronic().mol

    # -- electron density --------------------------------------------------------------------------
    def get_electron_density(self, points):
        """All-electron density at ``points`` (m, 3) in Angstrom, returned in e/Angstrom^3."""
        res = self._electronic()
        pts = np.asarray(points, dtype=float).reshape(-1, 3) / BOHR
        rho = electronic.density_on_points(res.mol, res.dm, pts).numpy()
        return rho / BOHR**3

    def get_density_on_grid(self, nx=60, ny=60, nz=60, margin=2.0):
        """Density on a box around the molecule: ``(rho (nx, ny, nz) e/A^3, origin (3,) A, axes (3, 3) A)``.

        The box encloses all atoms plus ``margin`` Angstrom; point (i, j, k) is at
        ``origin + i*axes[0] + j*axes[1] + k*axes[2]``.
        """
        res = self._electronic()
        rho, origin, axes = electronic.density_on_grid(res.mol, res.dm, nx, ny, nz, margin / BOHR)
        return rho / BOHR**3, origin * BOHR, axes * BOHR

    def get_pseudo_density(self, spin=None, pad=True, nx=60, ny=60, nz=60, margin=2.0):
        """All-electron density (no pseudopotentials) on the box of :meth:`get_density_on_grid`, e/A^3."""
        if spin not in (None, 0):
            raise IndexError("closed shell: only spin=None or 0")
        return self.get_density_on_grid(nx, ny, nz, margin)[0]

    def write_cube(self, filename, nx=80, ny=80, nz=80, margin=2.0):
        """Write the electron density as a Gaussian cube file (the format's units: Bohr, e/Bohr^3).

        ``margin`` (Angstrom) around the atoms; written by ``pyscf.tools.cubegen``.
        """
        res = self._electronic()
        electronic.write_cube(filename, res.mol, res.dm, nx, ny, nz, margin / BOHR)


def _torch(x):
    import torch

    if torch.is_tensor(x):
        return x.detach().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))
