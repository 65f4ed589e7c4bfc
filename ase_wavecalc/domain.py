"""Which molecules a model was trained on: composition and covalent bonds of the training frames.

A Hamiltonian network trained on one molecule's geometries (PhiSNet-style) has learned that molecule and
nothing else. Run on another one of the same elements (methanol through an ethanol model) or on an isomer
(dimethyl ether), or on a geometry where a bond has broken, it still returns numbers, and they are wrong
by tenths of an eV to hundreds of eV with no other sign. The model card's ``training_domain`` therefore
records, besides the shortest pair distances (``providers/model.py``):

| key | what | example |
|---|---|---|
| ``compositions`` | Hill formulas of the training molecules | ``["C2H6O"]`` |
| ``bond_signatures`` | covalent bonds per element pair, one string per distinct bonding pattern | ``["C-C:1 C-H:5 C-O:1 H-O:1"]`` |

Two atoms are bonded when closer than ``BOND_SCALE`` x the sum of their covalent radii (ASE's
``covalent_radii``, Cordero et al. 2008): 1.39 A for C-H, 1.26 A for O-H, 1.98 A for C-C, well beyond any
thermal stretch at the temperatures of the training data and short of any non-bonded pair of a molecule.
Counting bonds per element pair (a graph invariant) separates isomers and broken bonds without graph
matching. ``outside`` gives the reason a geometry is outside the recorded domain, or None; cards without
these keys (older exports) are not checked. Angstrom throughout.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["BOND_SCALE", "formula", "bond_counts", "bond_signature", "describe_frames", "merge", "outside"]

BOND_SCALE = 1.3    # x (r_cov,a + r_cov,b): bonded


def formula(numbers) -> str:
    """Hill formula of the atomic numbers (C first, then H, then the others alphabetically): "C2H6O"."""
    from ase.formula import Formula
    from ase.data import chemical_symbols

    symbols = "".join(chemical_symbols[int(z)] for z in np.asarray(numbers, dtype=int).reshape(-1))
    return Formula(symbols).format("hill")


def bond_counts(numbers, positions_angstrom) -> dict[str, int]:
    """Covalent bonds per element pair, {"C-H": 5, ...} (symbols of a pair in alphabetical order).

    numbers: (n,) atomic numbers; positions_angstrom: (n, 3)."""
    from ase.data import chemical_symbols, covalent_radii

    z = np.asarray(numbers, dtype=int).reshape(-1)
    pos = np.asarray(positions_angstrom, dtype=float).reshape(-1, 3)
    if len(z) != len(pos):
        raise ValueError(f"{len(z)} atomic numbers but {len(pos)} positions")
    i, j = np.triu_indices(len(z), 1)
    dist = np.linalg.norm(pos[i] - pos[j], axis=1)
    bonded = dist < BOND_SCALE * (covalent_radii[z[i]] + covalent_radii[z[j]])
    return dict(Counter("-".join(sorted((chemical_symbols[z[a]], chemical_symbols[z[b]])))
                        for a, b in zip(i[bonded], j[bonded])))


def bond_signature(numbers, positions_angstrom) -> str:
    """The bond counts as one string, pairs sorted: "C-C:1 C-H:5 C-O:1 H-O:1" ("" for no bonds)."""
    return " ".join(f"{pair}:{n}" for pair, n in sorted(bond_counts(numbers, positions_angstrom).items()))


def describe_frames(numbers, positions_angstrom) -> dict:
    """``compositions`` and ``bond_signatures`` (sorted, distinct) of frames of one molecule.

    numbers: (n,); positions_angstrom: (n_frames, n, 3)."""
    frames = np.asarray(positions_angstrom, dtype=float)
    frames = frames.reshape(-1, *frames.shape[-2:])
    return {"compositions": [formula(numbers)],
            "bond_signatures": sorted({bond_signature(numbers, p) for p in frames})}


def merge(descriptions) -> dict:
    """One ``describe_frames``-style dict from several (the union of each key)."""
    out: dict[str, set] = {"compositions": set(), "bond_signatures": set()}
    for d in descriptions:
        for key in out:
            out[key].update(d.get(key, ()))
    return {key: sorted(v) for key, v in out.items()}


def outside(domain: dict, numbers, positions_angstrom, model_name: str) -> str | None:
    """Why this molecule is outside ``domain`` (a card's ``training_domain``), or None if it is inside or the
    card does not record compositions and bonds."""
    compositions = domain.get("compositions")
    if compositions:
        here = formula(numbers)
        if here not in compositions:
            return (f"model {model_name!r} was trained on {' and '.join(compositions)} only, and this molecule is "
                    f"{here}: a network trained on other molecules returns meaningless numbers for it. Use a "
                    "model trained on it, PySCF (WaveCalculator(method=..., basis=...)), or "
                    "out_of_domain='reference' (PySCF for what the model refuses)")
    signatures = domain.get("bond_signatures")
    if signatures:
        here = bond_signature(numbers, positions_angstrom)
        if here not in signatures:
            return (f"the bonds of this geometry ({here or 'none'}; atoms closer than {BOND_SCALE:g}x their "
                    f"covalent radii) are not those of any training frame of model {model_name!r} "
                    f"({' | '.join(signatures)}): a bond has broken or formed, or this is another isomer, which "
                    "the model was not trained on")
    return None
