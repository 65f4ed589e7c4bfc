"""The electronic-structure accessors of :class:`~ase_wavecalc.WaveCalculator` (a mixin): orbital energies,
occupations, HOMO/LUMO, the matrices F, h, S, P, C in atomic units and PySCF AO order, and the electron
density on points, on a box and as a cube file. Each reads the last geometry's HamiltonianResult through
the calculator's ``_electronic()`` (which computes it first if needed); the table of units is in the
``calculator`` module docstring.
"""
from __future__ import annotations

import numpy as np
from ase.calculators.calculator import InputError

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

    def get_pseudo_density(self, spin=None, pad=True, nx=None, ny=None, nz=None, spacing=0.2):
        """All-electron density (no pseudopotentials) in e/Angstrom^3 on the grid of the atoms' cell, as ASE's
        periodic-code calculators return it, so that ``ase.io.write("d.cube", atoms,
        data=calc.get_pseudo_density())`` (and the xsf writer) place it right: element (i, j, k) of the
        (nx, ny, nz) array is the density at ``i/nx * cell[0] + j/ny * cell[1] + k/nz * cell[2]`` (Angstrom).

        The atoms need a cell around the molecule (``atoms.center(vacuum=4.0)``; pbc stays False); without
        one there is no grid to put the density on, and ``InputError`` says so (the cube writer would write
        zero voxel vectors): :meth:`write_cube` writes a cube of a box around the molecule instead, and
        :meth:`get_density_on_grid` returns such a box's density with its origin and axes.
        nx, ny, nz: points along each cell vector, default its length / ``spacing`` (Angstrom), rounded up.
        ``pad`` is accepted for ASE's signature and changes nothing (the grid is the cell's). Atoms outside
        the cell warn: the grid covers the cell only."""
        if spin not in (None, 0):
            raise IndexError("closed shell: only spin=None or 0")
        res = self._electronic()
        atoms = self.atoms
        if atoms.cell.rank < 3:
            raise InputError(
                "get_pseudo_density() gives the density on the grid of the atoms' cell (ASE's convention, which "
                "ase.io.write(..., data=...) assumes), and these atoms have no cell: give them one around the "
                "molecule (atoms.center(vacuum=4.0), then compute again), or write a cube of a box around the "
                "molecule with calc.write_cube('density.cube'), or take calc.get_density_on_grid() (density, "
                "origin and axes of that box)")
        cell = np.asarray(atoms.cell, dtype=float)
        shape = [int(n) if n is not None else max(2, int(np.ceil(np.linalg.norm(v) / spacing)))
                 for n, v in zip((nx, ny, nz), cell)]
        if min(shape) < 1:
            raise ValueError(f"grid points per cell vector must be positive, got {shape}")
        scaled = atoms.cell.scaled_positions(atoms.positions)
        if (scaled < 0).any() or (scaled >= 1).any():
            import warnings

            warnings.warn("atoms outside their cell: the density grid covers the cell only (atoms.center() "
                          "puts the molecule in the middle of it)", UserWarning, stacklevel=2)
        frac = np.stack(np.meshgrid(*(np.arange(n) / n for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
        rho = electronic.density_on_points(res.mol, res.dm, frac @ cell / BOHR).numpy()
        return rho.reshape(shape) / BOHR**3

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
