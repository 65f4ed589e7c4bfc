"""Which molecules a model was trained on: composition and covalent bonds of the training frames.

A Hamiltonian network trained on one molecule's geometries (PhiSNet-style) has learned that molecule and
nothing else. Run on another one of the same elements (methanol through an ethanol model) or on an isomer
(dimethyl ether), or on a geometry where a bond has broken, it still returns numbers, and they are wrong
by tenths of an eV to hundreds of eV with no other sign. The model card's ``training_domain`` therefore
records, besides the shortest pair distances (``providers/model.py``):

| key | what | example |
|---|---|---|
| ``compositions`` | Hill formulas of the training molecules | ``["C2H6O"]`` |
| ``bond_signatures`` | per formula, the distinct bonding patterns of its training frames | ``{"C2H6O": ["C[CH2O] C[CH3] H[C]x5 H[O] O[CH]"]}`` |

Two atoms are bonded when closer than ``BOND_SCALE`` x the sum of their covalent radii (ASE's
``covalent_radii``, Cordero et al. 2008): 1.39 A for C-H, 1.26 A for O-H, 1.98 A for C-C. A bonding pattern
is the multiset of atom environments, each atom's element with the Hill formula of its bonded neighbours
(``C[CH2O]``: a carbon bonded to one C, two H and one O). That is one round of Weisfeiler-Lehman refinement of
the bond graph: it tells apart ethanol and dimethyl ether, n- and iso-butane, 1- and 2-propanol, and notices
a bond that breaks or forms (unless other changes restore every atom's environment); graphs that only differ
further out (rings of different sizes built from the
same environments) can share a pattern. ``outside`` gives the reason a geometry is outside the recorded
domain, or None; cards without these keys (exports before they existed) are not checked. Angstrom throughout.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["BOND_SCALE", "formula", "bonded_pairs", "bond_signature", "describe_frames", "merge", "outside"]

BOND_SCALE = 1.3    # x (r_cov,a + r_cov,b): bonded


def _hill(symbols) -> str:
    from ase.formula import Formula

    return Formula("".join(symbols)).format("hill") if len(symbols) else ""


def formula(numbers) -> str:
    """Hill formula of the atomic numbers (C first, then H, then the others alphabetically): "C2H6O"."""
    from ase.data import chemical_symbols

    return _hill([chemical_symbols[int(z)] for z in np.asarray(numbers, dtype=int).reshape(-1)])


def bonded_pairs(numbers, positions_angstrom, scale: float = BOND_SCALE) -> np.ndarray:
    """(n_bonds, 2) atom indices i < j (in that order) closer than ``scale`` x their summed covalent radii.

    numbers: (n,) atomic numbers; positions_angstrom: (n, 3)."""
    from ase.data import covalent_radii

    z = np.asarray(numbers, dtype=int).reshape(-1)
    pos = np.asarray(positions_angstrom, dtype=float).reshape(-1, 3)
    if len(z) != len(pos):
        raise ValueError(f"{len(z)} atomic numbers but {len(pos)} positions")
    i, j = np.triu_indices(len(z), 1)
    bonded = np.linalg.norm(pos[i] - pos[j], axis=1) < scale * (covalent_radii[z[i]] + covalent_radii[z[j]])
    return np.stack([i[bonded], j[bonded]], axis=1)


def bond_signature(numbers, positions_angstrom) -> str:
    """The bonding pattern: atom environments with their counts, sorted, e.g. for ethanol
    "C[CH2O] C[CH3] H[C]x5 H[O] O[CH]" (an atom without bonds is "X[]")."""
    from ase.data import chemical_symbols

    z = np.asarray(numbers, dtype=int).reshape(-1)
    symbols = [chemical_symbols[int(a)] for a in z]
    neighbours: list[list[str]] = [[] for _ in symbols]
    for a, b in bonded_pairs(z, positions_angstrom):
        neighbours[a].append(symbols[b])
        neighbours[b].append(symbols[a])
    counts = Counter(f"{s}[{_hill(n)}]" for s, n in zip(symbols, neighbours))
    return " ".join(env if n == 1 else f"{env}x{n}" for env, n in sorted(counts.items()))


def describe_frames(numbers, positions_angstrom) -> dict:
    """``compositions`` and ``bond_signatures`` of frames of one molecule.

    numbers: (n,); positions_angstrom: (n_frames, n, 3)."""
    frames = np.asarray(positions_angstrom, dtype=float)
    frames = frames.reshape(-1, *frames.shape[-2:])
    name = formula(numbers)
    return {"compositions": [name], "bond_signatures": {name: sorted({bond_signature(numbers, p) for p in frames})}}


def merge(descriptions) -> dict:
    """One ``describe_frames``-style dict from several (the union per formula)."""
    compositions: set[str] = set()
    signatures: dict[str, set[str]] = {}
    for d in descriptions:
        compositions.update(d.get("compositions", ()))
        for name, patterns in (d.get("bond_signatures") or {}).items():
            signatures.setdefault(name, set()).update(patterns)
    return {"compositions": sorted(compositions),
            "bond_signatures": {name: sorted(v) for name, v in sorted(signatures.items())}}


def outside(domain: dict, numbers, positions_angstrom, model_name: str) -> str | None:
    """Why this molecule is outside ``domain`` (a card's ``training_domain``), or None if it is inside or the
    card does not record compositions and bonds."""
    compositions = domain.get("compositions")
    here = formula(numbers)
    if compositions and here not in compositions:
        return (f"model {model_name!r} was trained on {', '.join(compositions)} only, and this molecule is "
                f"{here}: a network trained on other molecules returns meaningless numbers for it (use a model "
                "trained on it, or PySCF)")
    patterns = (domain.get("bond_signatures") or {}).get(here)
    if patterns:
        pattern = bond_signature(numbers, positions_angstrom)
        if pattern not in patterns:
            return (f"the bonds of this geometry ({pattern}: each atom with its bonded neighbours, bonded below "
                    f"{BOND_SCALE:g}x the summed covalent radii) are those of no {here} training frame of model "
                    f"{model_name!r} ({' | '.join(patterns)}): a bond has broken or formed, or this is another "
                    "isomer, which the model was not trained on")
    return None
