"""``PySCFProvider``: exact closed-shell SCF (RHF or RKS) with PySCF, its analytic gradient and Hessian.

Implements the provider interface of :mod:`ase_wavecalc.providers.base`.
"""
from __future__ import annotations

import time

import numpy as np
from ase.calculators.calculator import CalculationFailed

from ..validation import n_occupied

from .base import HamiltonianProvider, HamiltonianResult

__all__ = ["PySCFProvider"]


class PySCFProvider(HamiltonianProvider):
    """Exact closed-shell SCF with PySCF: RHF (``method="hf"``) or RKS with ``xc=method``.

    Parameters
    ----------
    method: "hf"/"rhf" or any PySCF/libxc functional name ("pbe", "b3lyp", "wb97x", ...).
    basis: any PySCF basis name (default "def2-svp").
    charge: total charge (closed shell: the electron count must be even).
    conv_tol: SCF energy convergence (Hartree); ``conv_tol_grad`` defaults to sqrt(conv_tol).
    grid_level: PySCF DFT grid level (0-9), RKS only.
    max_cycle: SCF iterations before giving up (then ``CalculationFailed``).
    grid_response: include the DFT grid-weight derivatives in the gradient (exact derivative of the
        grid-dependent energy, translationally invariant forces; costs more). PySCF's default: False.
    reuse_density: start each SCF from the previous density when the atoms (numbers) are the same,
        as PySCF's ``as_scanner`` does; falls back to the default guess if that does not converge.
    """

    def __init__(self, method: str = "pbe", basis: str = "def2-svp", charge: int = 0,
                 conv_tol: float = 1e-10, conv_tol_grad: float | None = None, grid_level: int = 3,
                 max_cycle: int = 100, grid_response: bool = False, reuse_density: bool = True,
                 verbose: int = 0):
        from ..reference import normalize_method

        self.kind, self.xc = normalize_method(method)   # ValueError for an unknown functional
        self.method = str(method).lower()
        self.basis = str(basis) if isinstance(basis, str) else basis
        self.charge = int(charge)
        self.conv_tol = float(conv_tol)
        self.conv_tol_grad = None if conv_tol_grad is None else float(conv_tol_grad)
        self.grid_level = int(grid_level)
        self.max_cycle = int(max_cycle)
        self.grid_response = bool(grid_response)
        self.reuse_density = bool(reuse_density)
        self.verbose = int(verbose)
        self.elements = None
        self._key = None      # (numbers, positions bytes) of the last call
        self._mf = None       # converged SCF object of the last call
        self._result = None   # its HamiltonianResult
        self.n_calls = 0      # number of SCF runs (diagnostics; the calculator tests count them)

    def describe(self) -> dict:
        return {"provider": "PySCFProvider", "method": self.method, "basis": self.basis,
                "charge": self.charge, "conv_tol": self.conv_tol, "grid_level": self.grid_level,
                "grid_response": self.grid_response}

    def _label(self):
        return f"PySCF {'RHF' if self.kind == 'rhf' else 'RKS/' + self.xc}/{self.basis}"

    def _new_scf(self, mol):
        from pyscf import dft, scf

        if self.kind == "rhf":
            mf = scf.RHF(mol)
        else:
            mf = dft.RKS(mol)
            mf.xc = self.xc
            mf.grids.level = self.grid_level
        mf.conv_tol = self.conv_tol
        if self.conv_tol_grad is not None:
            mf.conv_tol_grad = self.conv_tol_grad
        mf.max_cycle = self.max_cycle
        mf.verbose = self.verbose
        return mf

    def _run_scf(self, mol, dm0):
        mf = self._new_scf(mol)
        mf.kernel(dm0=dm0)
        if not mf.converged and dm0 is not None:
            mf = self._new_scf(mol)      # the previous density may be a poor guess after a big step
            mf.kernel()
        if not mf.converged:
            mf2 = self._new_scf(mol).newton()  # second-order SCF from the last orbitals
            mf2.kernel(mf.mo_coeff, mf.mo_occ)
            if mf2.converged:
                return mf2
            raise CalculationFailed(
                f"{self._label()} SCF did not converge in {self.max_cycle} cycles (also tried the "
                f"default guess and second-order SCF; last E = {float(mf.e_tot):.10f} Ha). Check the "
                "geometry, or raise max_cycle / loosen conv_tol")
        return mf

    def compute(self, numbers, positions_bohr, want_gradient: bool = False, dm0=None,
                guess_name: str = "given density") -> HamiltonianResult:
        """SCF (and gradient if ``want_gradient``) at ``positions_bohr`` (n, 3) -> HamiltonianResult.

        ``dm0``: (nao, nao) initial density matrix (e.g. a model's prediction, ``providers/refine.py``);
        default: the previous call's density (``reuse_density``) or PySCF's default guess (minao).
        ``guess_name`` labels it in ``info["initial_guess"]``."""
        from ..integrals import make_mol

        numbers = tuple(int(z) for z in np.asarray(numbers).reshape(-1))
        positions_bohr = np.array(positions_bohr, dtype=np.float64).reshape(-1, 3)
        key = (numbers, positions_bohr.tobytes())
        if key == self._key and self._result is not None:
            if want_gradient and self._result.gradient is None:
                self._result.gradient = self._gradient(self._mf)
            return self._result

        t0 = time.perf_counter()
        mol = make_mol(numbers, positions_bohr, self.basis, charge=self.charge, spin=0,
                       verbose=self.verbose)
        try:
            n_occupied(None, mol=mol)
        except ValueError as exc:
            raise CalculationFailed(f"{self._label()}: {exc}") from None
        guess = guess_name if dm0 is not None else "default"
        if (dm0 is None and self.reuse_density and self._key is not None and self._key[0] == numbers
                and self._mf is not None and self._mf.mol.nao_nr() == mol.nao_nr()):
            dm0, guess = self._result.dm, "previous density"
        mf = self._run_scf(mol, dm0)
        self.n_calls += 1

        dm = mf.make_rdm1()
        overlap = mf.get_ovlp()
        hcore = mf.get_hcore()
        fock = mf.get_fock(h1e=hcore, s1e=overlap, dm=dm)  # no DIIS, damping or level shift
        mo_energy, mo_coeff = mf.eig(fock, overlap)        # the orbitals of exactly this F
        mo_occ = mf.get_occ(mo_energy, mo_coeff)
        info = {"scf_cycles": int(getattr(mf, "cycles", -1)), "converged": True,
                "initial_guess": guess,
                "scf_seconds": time.perf_counter() - t0}
        result = HamiltonianResult(
            fock=np.asarray(fock), overlap=np.asarray(overlap), energy=float(mf.e_tot),
            mo_energy=np.asarray(mo_energy), mo_coeff=np.asarray(mo_coeff), mo_occ=np.asarray(mo_occ),
            dm=np.asarray(dm), mol=mol, hcore=np.asarray(hcore), info=info)
        self._key, self._mf, self._result = key, mf, result
        if want_gradient:
            result.gradient = self._gradient(mf)
        return result

    def hessian(self, numbers, positions_bohr) -> np.ndarray:
        """(3n, 3n) analytic nuclear Hessian of the SCF energy (PySCF ``mf.Hessian()``), Hartree/Bohr^2."""
        result = self.compute(numbers, positions_bohr, want_gradient=False)
        del result
        hess = np.asarray(self._mf.Hessian().kernel(), dtype=np.float64)   # (n, n, 3, 3)
        n = hess.shape[0]
        return hess.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)

    def _gradient(self, mf) -> np.ndarray:
        t0 = time.perf_counter()
        grad = mf.nuc_grad_method()
        grad.verbose = self.verbose
        if self.kind == "rks":
            grad.grid_response = self.grid_response
        out = np.asarray(grad.kernel(), dtype=np.float64)
        if self._result is not None:
            self._result.info["gradient_seconds"] = time.perf_counter() - t0
        return out
