"""Finite-difference references shared by the force and Hessian tests (not a test module)."""
import numpy as np


def fd_hessian(atoms, make_calc, step=1e-4):
    """(3N, 3N) central differences of the analytic forces, eV/Angstrom^2: row k is -dF/dx_k.
    ``make_calc()`` returns the calculator for each displaced copy (the same object may be returned)."""
    n = 3 * len(atoms)
    hess = np.zeros((n, n))
    for k in range(n):
        cols = []
        for sign in (1, -1):
            trial = atoms.copy()
            trial.positions[k // 3, k % 3] += sign * step
            trial.calc = make_calc()
            cols.append(-trial.get_forces().reshape(-1))
        hess[k] = (cols[0] - cols[1]) / (2 * step)
    return hess
