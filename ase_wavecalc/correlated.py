"""High-level (correlated) reference energies and forces for transfer learning: CCSD(T) and MP2 with PySCF.

``run_correlated`` returns one frame's label in atomic units:

| key | shape | unit |
|---|---|---|
| e_tot | () | Hartree, total energy (RHF + correlation, incl. nuclear repulsion) |
| gradient | (n, 3) | Hartree/Bohr, analytic; NaN when ``gradient=False`` |
| info | dict | seconds, converged stages |

Settings fixed here (stated in ``correlated_settings``, stored in the dataset's metadata): closed-shell
RHF reference (conv_tol 1e-12), all electrons correlated (no frozen core), conventional integrals. Two
pitfalls of PySCF 2.14 are avoided on purpose:

- ``pyscf.grad.ccsd_t.Gradients(cc).kernel()`` without amplitudes uses the CCSD lambda amplitudes, not
  the (T)-corrected ones: its result is not the derivative of the CCSD(T) energy. The (T)-lambda
  equations (``pyscf.cc.ccsd_t_lambda``) are solved first and passed in.
- Density-fitted CCSD(T) gradients are wrong in 2.14: no density fitting anywhere.

An RHF, CCSD or lambda solver that does not converge raises ``reference.ReferenceNotConverged``; the frame
is then stored as failed, as for SCF references.
"""
from __future__ import annotations

import time

import numpy as np

from .reference import ReferenceNotConverged
from .validation import n_occupied

__all__ = ["CORRELATED_METHODS", "correlated_method", "correlated_settings", "run_correlated"]

#: accepted spellings -> canonical name
CORRELATED_METHODS = {"ccsd(t)": "CCSD(T)", "ccsd_t": "CCSD(T)", "mp2": "MP2"}

CONV_TOL_SCF = 1e-12
CONV_TOL_CC = 1e-10


def correlated_method(method: str) -> str | None:
    """Canonical name ("CCSD(T)", "MP2") if ``method`` is a correlated method, else None."""
    return CORRELATED_METHODS.get(str(method).strip().lower())


def correlated_settings(method: str, basis: str, gradient: bool = True) -> dict:
    """The level of theory as stored in a dataset's ``high_level`` metadata and in model cards."""
    import pyscf

    name = correlated_method(method)
    if name is None:
        raise ValueError(f"{method!r} is not a correlated method; known: {sorted(set(CORRELATED_METHODS.values()))}")
    forces = ("analytic, (T)-lambda amplitudes" if name == "CCSD(T)" else "analytic") if gradient else "none"
    return {"method": name, "basis": str(basis).lower(), "reference": "RHF", "frozen_core": False,
            "conv_tol_scf": CONV_TOL_SCF, "conv_tol_ccsd": CONV_TOL_CC if name == "CCSD(T)" else None,
            "density_fitting": False, "forces": forces, "pyscf_version": pyscf.__version__}


def run_correlated(numbers, positions_bohr, method: str, basis: str, gradient: bool = True,
                   charge: int = 0, max_cycle: int = 100) -> dict:
    """Energy (and analytic gradient) of ``method`` ("ccsd(t)" or "mp2") at one geometry (Bohr)."""
    from pyscf import cc, mp, scf

    from .integrals import make_mol

    name = correlated_method(method)
    if name is None:
        raise ValueError(f"{method!r} is not a correlated method; known: {sorted(set(CORRELATED_METHODS.values()))}")
    t0 = time.perf_counter()
    try:
        n_occupied(numbers, charge)
    except ValueError as exc:
        raise ValueError(f"correlated labels need a closed shell (RHF reference): {exc}") from None
    mol = make_mol(numbers, positions_bohr, basis, charge=charge)
    mf = scf.RHF(mol)
    mf.conv_tol = CONV_TOL_SCF
    mf.max_cycle = int(max_cycle)
    mf.verbose = 0
    mf.kernel()
    if not mf.converged:
        raise ReferenceNotConverged(f"RHF did not converge in {max_cycle} cycles", float(mf.e_tot))
    grad = np.full((len(mol.atom_charges()), 3), np.nan)
    if name == "MP2":
        solver = mp.MP2(mf)
        solver.verbose = 0
        solver.kernel()
        e_tot = float(solver.e_tot)
        if gradient:
            grad = np.asarray(solver.nuc_grad_method().kernel(), dtype=float)
    else:
        solver = cc.CCSD(mf)
        solver.conv_tol = CONV_TOL_CC
        solver.max_cycle = int(max_cycle)
        solver.verbose = 0
        eris = solver.ao2mo(mf.mo_coeff)
        solver.kernel(eris=eris)
        if not solver.converged:
            raise ReferenceNotConverged(f"CCSD did not converge in {max_cycle} cycles", float(solver.e_tot))
        e_t = solver.ccsd_t(eris=eris)
        e_tot = float(solver.e_tot + e_t)
        if gradient:
            from pyscf.cc import ccsd_t_lambda
            from pyscf.grad import ccsd_t as ccsd_t_grad

            conv, l1, l2 = ccsd_t_lambda.kernel(solver, eris, solver.t1, solver.t2, max_cycle=max_cycle,
                                                verbose=0)
            if not conv:
                raise ReferenceNotConverged(f"(T)-lambda equations did not converge in {max_cycle} cycles", e_tot)
            grad = np.asarray(ccsd_t_grad.Gradients(solver).kernel(solver.t1, solver.t2, l1, l2, eris=eris),
                              dtype=float)
    return {"e_tot": np.asarray(e_tot), "gradient": grad,
            "info": {"seconds": time.perf_counter() - t0, "method": name}}
