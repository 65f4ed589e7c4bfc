"""One PySCF reference calculation (closed-shell RKS with any xc, or RHF) -> a dict of arrays.

``run_reference`` returns the ``dataset.FRAME_KEYS`` arrays (atomic units, PySCF spherical AO order)
plus ``metadata`` and ``info``:

| key | shape | unit |
|---|---|---|
| fock | (nao, nao) | Hartree: ``mf.get_fock()`` of the converged density (no DIIS, no level shift) |
| overlap | (nao, nao) | - |
| hcore | (nao, nao) | Hartree (kinetic + nuclear attraction) |
| e_tot | () | Hartree |
| gradient | (n, 3) | Hartree/Bohr, analytic (zeros if ``gradient=False``) |
| mo_energy | (nao,) | Hartree, PySCF's (last SCF iteration) |
| dipole | (3,) | e*Bohr, nuclei + electrons, origin 0 |
| metadata | dict | method, xc, basis, grid_level, conv_tol, conv_tol_grad, pyscf_version, units |
| info | dict | scf_cycles, seconds, converged |
"""
from __future__ import annotations

import math
import time

import numpy as np

from .units import angstrom_to_bohr
from .validation import n_occupied

__all__ = ["ReferenceNotConverged", "run_reference", "reference_settings", "normalize_method", "functional_energy"]


class ReferenceNotConverged(RuntimeError):
    """The SCF did not converge within ``max_cycle`` iterations (the frame is not a valid reference)."""

    def __init__(self, message: str, e_tot: float = float("nan"), cycles: int = -1):
        super().__init__(message)
        self.e_tot = e_tot
        self.cycles = cycles

    def __reduce__(self):  # keep the attributes through pickling (process pools, Dask)
        return (type(self), (str(self), self.e_tot, self.cycles))


def normalize_method(method: str) -> tuple[str, str]:
    """``method`` -> (PySCF class "rhf" or "rks", xc): "hf"/"rhf" -> ("rhf", "hf"); else ("rks", xc).

    The xc string is checked with libxc (``ValueError`` if PySCF does not know it).
    """
    m = str(method).strip().lower()
    if m in ("hf", "rhf"):
        return "rhf", "hf"
    from pyscf.dft import libxc

    try:
        libxc.parse_xc(m)
    except (KeyError, ValueError, NotImplementedError) as exc:
        raise ValueError(f"unknown method/xc functional {method!r} (use 'hf' or a PySCF xc name such as "
                         f"'pbe', 'b3lyp'): {exc}") from None
    return "rks", m


def reference_settings(method="pbe", basis="def2-svp", conv_tol=1e-11, grid_level=3,
                       conv_tol_grad=None) -> dict:
    """The metadata that identifies a reference (what ``dataset.update_metadata`` compares)."""
    import pyscf

    from .dataset import UNITS

    kind, xc = normalize_method(method)
    if conv_tol_grad is None:
        conv_tol_grad = math.sqrt(conv_tol) / 10
    return {"method": kind, "xc": xc, "basis": str(basis).lower(),
            "grid_level": int(grid_level) if kind == "rks" else None,
            "conv_tol": float(conv_tol), "conv_tol_grad": float(conv_tol_grad),
            "pyscf_version": pyscf.__version__, "units": UNITS}


def run_reference(numbers, positions_angstrom, method: str = "pbe", basis: str = "def2-svp",
                  conv_tol: float = 1e-11, grid_level: int = 3, charge: int = 0, spin: int = 0,
                  gradient: bool = True, max_cycle: int = 100, conv_tol_grad: float | None = None,
                  verbose: int = 0, dm0=None) -> dict:
    """Closed-shell SCF (RHF for ``method`` "hf"/"rhf", else RKS with ``xc=method``) and its gradient.

    ``dm0``: (nao, nao) initial density matrix (PySCF AO order; e.g. a model's prediction), else PySCF's
    default guess (minao). Only the start of the SCF differs: the converged result is the same.

    Positions in Angstrom (converted with ``units.BOHR``, the molecule is built in Bohr, never
    reoriented). ``conv_tol`` (energy, Hartree) and ``conv_tol_grad`` (orbital gradient; default
    sqrt(conv_tol)/10) are both enforced. Raises ``ReferenceNotConverged`` if the SCF does not
    converge in ``max_cycle`` iterations, ``ValueError`` for open shells or an unknown method.
    """
    from pyscf import dft, scf

    from .integrals import make_mol

    if spin != 0:
        raise ValueError(f"run_reference is closed-shell only (RHF/RKS): spin={spin} (2S) is not supported")
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    try:
        n_occupied(numbers, charge)
    except ValueError as exc:
        raise ValueError(f"run_reference (RHF/RKS): {exc} (sum Z = {numbers.sum()}, charge {charge})") from None
    settings = reference_settings(method, basis, conv_tol, grid_level, conv_tol_grad)
    positions_bohr = angstrom_to_bohr(np.asarray(positions_angstrom, dtype=float).reshape(-1, 3))
    if not np.all(np.isfinite(positions_bohr)):
        raise ValueError("positions contain NaN or inf")

    t0 = time.perf_counter()
    mol = make_mol(numbers, positions_bohr, basis, charge=charge, spin=0, verbose=verbose)
    if settings["method"] == "rhf":
        mf = scf.RHF(mol)
    else:
        mf = dft.RKS(mol)
        mf.xc = settings["xc"]
        mf.grids.level = int(grid_level)
    mf.conv_tol = float(conv_tol)
    mf.conv_tol_grad = settings["conv_tol_grad"]
    mf.max_cycle = int(max_cycle)
    mf.verbose = verbose
    cycles = [0]

    def count(envs):
        cycles[0] = envs.get("cycle", cycles[0] - 1) + 1

    mf.callback = count
    e_tot = mf.kernel(dm0=None if dm0 is None else np.asarray(dm0, dtype=float))
    if not mf.converged:
        raise ReferenceNotConverged(
            f"{settings['method'].upper()}/{settings['xc']}/{basis} SCF not converged in {max_cycle} cycles "
            f"(last E = {e_tot:.10f} Ha)", e_tot=float(e_tot), cycles=int(cycles[0]))

    dm = mf.make_rdm1()
    fock = mf.get_fock(dm=dm)  # of the final density: no DIIS extrapolation, damping or level shift
    overlap = mf.get_ovlp()
    hcore = mf.get_hcore()
    charges = mol.atom_charges()
    with mol.with_common_orig((0.0, 0.0, 0.0)):
        ao_dip = mol.intor_symmetric("int1e_r", comp=3)
    dipole = charges @ mol.atom_coords() - np.einsum("xij,ji->x", ao_dip, dm)
    if gradient:
        grad = np.asarray(mf.nuc_grad_method().kernel(), dtype=float)
    else:
        grad = np.zeros((len(numbers), 3))
    return {
        "fock": np.asarray(fock, dtype=float), "overlap": np.asarray(overlap, dtype=float),
        "hcore": np.asarray(hcore, dtype=float), "e_tot": np.asarray(float(e_tot)),
        "gradient": grad, "mo_energy": np.asarray(mf.mo_energy, dtype=float),
        "dipole": np.asarray(dipole, dtype=float),
        "metadata": settings,
        "info": {"scf_cycles": int(cycles[0]), "seconds": time.perf_counter() - t0, "converged": True,
                 "gradient": bool(gradient), "guess": "minao" if dm0 is None else "given"},
    }


def functional_energy(mol, dm, method: str = "pbe", grid_level: int = 3, gradient: bool = False,
                      grid_response: bool = True) -> dict:
    """The reference method's energy functional at a given closed-shell density matrix (no SCF).

    E[P] = E_nn + Tr[P h] + 1/2 Tr[P J[P]] (+ exchange) + E_xc[P], the energy PySCF minimizes, evaluated
    at ``dm`` (nao, nao; PySCF AO order of ``mol``, spin-summed). At the SCF density it is ``e_tot``; for
    any other idempotent density with the same electron count it is higher (variational), by an amount
    second order in the density error (Harris-Foulkes). This is how good a predicted density is, in
    energy terms.

    Returns a dict (atomic units): ``e_tot`` (Hartree), ``fock`` (nao, nao): dE/dP = h + J[P] + V_xc[P]
    (the Kohn-Sham matrix of P), and with ``gradient`` also ``gradient_fixed_density`` (n, 3),
    Hartree/Bohr: dE/dR at fixed AO density matrix (basis functions, nuclei and, with ``grid_response``,
    the DFT grid moving with the atoms; no overlap term, since P is held fixed). The full derivative of
    E[P(R)] adds Tr[fock dP/dR], which belongs to whatever produced P (autograd for a network).
    """
    from pyscf import dft, scf

    kind, xc = normalize_method(method)
    dm = np.asarray(dm, dtype=float)
    if kind == "rhf":
        mf = scf.RHF(mol)
    else:
        mf = dft.RKS(mol)
        mf.xc = xc
        mf.grids.level = int(grid_level)
    mf.verbose = 0
    hcore = mf.get_hcore()
    veff = mf.get_veff(mol, dm)
    out = {"e_tot": float(mf.energy_tot(dm, h1e=hcore, vhf=veff)), "fock": np.asarray(hcore + veff)}
    if gradient:
        grad = mf.nuc_grad_method()
        grad.verbose = 0
        if kind == "rks":
            grad.grid_response = bool(grid_response)
        # grad_elec takes orbitals; any decomposition P = V diag(w) V^T gives P, and zero orbital energies
        # make the energy-weighted density (the overlap term) vanish
        w, v = np.linalg.eigh(dm)
        if w.min() < -1e-8 * max(1.0, w.max()):
            # PySCF rebuilds P from the orbitals with positive occupation only: the gradient would be wrong
            raise ValueError(f"the density matrix has a negative eigenvalue ({w.min():.2e}): the fixed-density "
                             "gradient needs a positive semidefinite P (a density of orbitals)")
        w = np.clip(w, 0.0, None)
        de = grad.grad_elec(np.zeros_like(w), v, w)
        out["gradient_fixed_density"] = np.asarray(de + grad.grad_nuc(), dtype=float)
    return out

