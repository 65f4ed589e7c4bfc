"""PySCF molecules and one-electron integrals (atomic units, PySCF spherical AO order).

| function | returns | unit |
|---|---|---|
| make_mol | pyscf.gto.Mole built in Bohr, symmetry off, spherical AOs | - |
"""
from __future__ import annotations

import numpy as np


def make_mol(numbers, positions_bohr, basis: str, charge: int = 0, spin: int = 0, verbose: int = 0):
    """Build a PySCF ``Mole`` from atomic numbers (n,) and positions (n, 3) in Bohr.

    ``symmetry=False`` and ``cart=False`` always: the molecule is never reoriented, so the AO matrices
    refer to exactly the given frame. ``spin`` is 2S (number of unpaired electrons), as in PySCF.
    """
    from pyscf import gto

    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    positions_bohr = np.asarray(positions_bohr, dtype=float).reshape(-1, 3)
    if len(numbers) != len(positions_bohr):
        raise ValueError(f"{len(numbers)} atomic numbers but {len(positions_bohr)} positions")
    mol = gto.Mole()
    mol.atom = [(int(z), tuple(map(float, r))) for z, r in zip(numbers, positions_bohr)]
    mol.unit = "Bohr"
    mol.basis = basis
    mol.charge = int(charge)
    mol.spin = int(spin)
    mol.symmetry = False
    mol.cart = False
    mol.verbose = verbose
    mol.build(parse_arg=False, dump_input=False)
    return mol
