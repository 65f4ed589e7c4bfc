"""The one place where atomic units meet ASE's units.

Everything inside ase-wavecalc is in atomic units (Hartree, Bohr, e*Bohr). The ASE boundary uses
eV, Angstrom and e*Angstrom. The constants come from :mod:`ase.units`, so numbers handed to ASE agree
with every other ASE calculator to the last digit.

| name | value | meaning |
|---|---|---|
| HARTREE | eV per Hartree | energies |
| BOHR | Angstrom per Bohr | lengths, dipoles (e*Bohr -> e*Angstrom) |
| HARTREE_PER_BOHR | eV/Angstrom per Hartree/Bohr | forces |
"""
from ase import units as _ase_units

HARTREE: float = float(_ase_units.Hartree)
BOHR: float = float(_ase_units.Bohr)
HARTREE_PER_BOHR: float = HARTREE / BOHR

__all__ = ["HARTREE", "BOHR", "HARTREE_PER_BOHR", "angstrom_to_bohr", "bohr_to_angstrom",
           "hartree_to_ev", "gradient_au_to_forces_ev"]


def angstrom_to_bohr(x):
    """Lengths: Angstrom -> Bohr (works for floats, numpy arrays and torch tensors)."""
    return x / BOHR


def bohr_to_angstrom(x):
    """Lengths (and dipoles e*Bohr -> e*Angstrom): Bohr -> Angstrom."""
    return x * BOHR


def hartree_to_ev(x):
    """Energies: Hartree -> eV."""
    return x * HARTREE


def gradient_au_to_forces_ev(gradient):
    """Energy gradient (Hartree/Bohr) -> forces (eV/Angstrom), i.e. minus the gradient, converted."""
    return -gradient * HARTREE_PER_BOHR
