"""Which molecules a model was trained on: composition and covalent bonds of the training frames.

A Hamiltonian network trained on one molecule's geometries (PhiSNet-style) has learned that molecule and
nothing else. Run on another one of the same elements (methanol through an ethanol model) or on an isomer
(dimethyl ether), or on a geometry where a bond has broken, it still returns numbers, and they are wrong
by tenths of an eV to hundreds of eV with no other sign. The model card's ``training_domain`` therefore
records:

| key | what | example |
|---|---|---|
| ``compositions`` | Hill formulas of the training molecules | ``["C2H6O"]`` |
| ``bond_signatures`` | per formula, the distinct bonding patterns of its training frames | ``{"C2H6O": ["C[CH2O] C[CH3] H[C]x5 H[O] O[CH]"]}`` |
| ``min_pair_distance_A`` | per element pair, the shortest distance of any two atoms | ``{"6-6": 1.4143, ...}`` |
| ``max_bond_length_A`` | per element pair, the longest bond (bonded as below) | ``{"6-6": 1.7038, ...}`` |
| ``hydrogens_on_nearest`` | bonds of hydrogen as below (cards since 2026-12-08; absent: by the cutoff alone) | ``true`` |

Two atoms are bonded when closer than ``BOND_SCALE`` x the sum of their covalent radii (ASE's
``covalent_radii``, Cordero et al. 2008): 1.39 A for C-H, 1.26 A for O-H, 1.98 A for C-C; in cards with
``hydrogens_on_nearest``, a hydrogen is bonded to its nearest atom alone, up to ``HYDROGEN_REACH`` x the radii
(1.61 A from C, 1.46 A from O): by the cutoff, a proton shared by two oxygens (PBE's malondialdehyde holds it
1.20-1.24 A from each) is bonded to both or to neither, a pattern a model refuses until it has trained on it,
while it is the same molecule; its length is still checked (``pair_distances``). A bonding pattern
is the multiset of atom environments, each atom's element with the Hill formula of its bonded neighbours
(``C[CH2O]``: a carbon bonded to one C, two H and one O). That is one round of Weisfeiler-Lehman refinement of
the bond graph: it tells apart ethanol and dimethyl ether, n- and iso-butane, 1- and 2-propanol, and notices
a bond that breaks or forms (unless other changes restore every atom's environment); graphs that only differ
further out (rings of different sizes built from the
same environments) can share a pattern. ``outside`` gives the reason a geometry is outside the recorded
compositions and bonds, or None; ``pair_distances`` compares its pair distances with the recorded range
(warning or refusal, see there). Cards without a key (exports before it existed) are not checked for it.
Whether an MD run kept its molecule is another question (``bond_graph_key``, ``first_lasting_bond_change``):
there like atoms may trade places (malondialdehyde's proton hops between its two oxygens and the molecule is
the same), a hydrogen belongs to its nearest atom (at PBE/def2-SVP that proton sits between the oxygens, 1.24 A
from each, as low in energy as at GFN2-xTB's minimum), and a change that reverts within tens of femtoseconds is
a bond in flight, not a broken one.
Angstrom throughout.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

__all__ = ["BOND_SCALE", "HYDROGEN_REACH", "formula", "bonded_pairs", "bond_signature", "bond_graph_key",
           "first_lasting_bond_change", "describe_frames", "merge", "outside", "longest_bonds", "pair_distances"]

BOND_SCALE = 1.3    # x (r_cov,a + r_cov,b): bonded
HYDROGEN_REACH = 1.5   # x (r_cov,H + r_cov,X): how far a hydrogen may be from its nearest atom and count as on it

# pair distances against the training range (pair_distances)
EXTRAPOLATION_ERROR = 0.8     # x the shortest training distance of the element pair: refused
EXTRAPOLATION_WARNING = 0.05  # Angstrom closer than that distance: a warning
STRETCH_ERROR = 1.1           # x the longest training bond of the element pair: refused
STRETCH_WARNING = 0.05        # Angstrom longer than that bond: a warning


def _hill(symbols) -> str:
    from ase.formula import Formula

    return Formula("".join(symbols)).format("hill") if len(symbols) else ""


def formula(numbers) -> str:
    """Hill formula of the atomic numbers (C first, then H, then the others alphabetically): "C2H6O"."""
    from ase.data import chemical_symbols

    return _hill([chemical_symbols[int(z)] for z in np.asarray(numbers, dtype=int).reshape(-1)])


def bonded_pairs(numbers, positions_angstrom, scale: float = BOND_SCALE,
                 hydrogens_on_nearest: bool = False) -> np.ndarray:
    """(n_bonds, 2) atom indices i < j (in that order) closer than ``scale`` x their summed covalent radii.

    ``hydrogens_on_nearest``: a hydrogen is bonded to its nearest atom (nearest relative to the summed covalent
    radii, so S-H 1.40 A is nearer than O-H 1.38 A) if closer than ``HYDROGEN_REACH`` x those radii (1.46 A from
    O, 1.61 A from C), else to none; besides, a hydrogen is bonded to another whose nearest atom it is (H2);
    the other pairs by ``scale``. A proton shared by two oxygens (1.24 A from each in PBE's malondialdehyde,
    bonded to both by the cutoff, to neither a little further out) is then on one of them, as on either side of
    the transfer.

    numbers: (n,) atomic numbers; positions_angstrom: (n, 3)."""
    from ase.data import covalent_radii

    z = np.asarray(numbers, dtype=int).reshape(-1)
    pos = np.asarray(positions_angstrom, dtype=float).reshape(-1, 3)
    if len(z) != len(pos):
        raise ValueError(f"{len(z)} atomic numbers but {len(pos)} positions")
    i, j = np.triu_indices(len(z), 1)
    d = np.linalg.norm(pos[i] - pos[j], axis=1)
    bonded = d < scale * (covalent_radii[z[i]] + covalent_radii[z[j]])
    if hydrogens_on_nearest and len(z) > 1:
        full = np.full((len(z), len(z)), np.inf)        # distance in units of the summed covalent radii
        full[i, j] = full[j, i] = d / (covalent_radii[z[i]] + covalent_radii[z[j]])
        nearest = np.argmin(full, axis=1)
        on = (z == 1) & (full[np.arange(len(z)), nearest] < HYDROGEN_REACH)  # hydrogen -> its nearest atom
        is_h = (z[i] == 1) | (z[j] == 1)
        bonded = np.where(is_h, (on[i] & (nearest[i] == j)) | (on[j] & (nearest[j] == i)), bonded)
    return np.stack([i[bonded], j[bonded]], axis=1)


def bond_signature(numbers, positions_angstrom, hydrogens_on_nearest: bool = False) -> str:
    """The bonding pattern: atom environments with their counts, sorted, e.g. for ethanol
    "C[CH2O] C[CH3] H[C]x5 H[O] O[CH]" (an atom without bonds is "X[]"). Bonded as in :func:`bonded_pairs`."""
    from ase.data import chemical_symbols

    z = np.asarray(numbers, dtype=int).reshape(-1)
    symbols = [chemical_symbols[int(a)] for a in z]
    neighbours: list[list[str]] = [[] for _ in symbols]
    for a, b in bonded_pairs(z, positions_angstrom, hydrogens_on_nearest=hydrogens_on_nearest):
        neighbours[a].append(symbols[b])
        neighbours[b].append(symbols[a])
    counts = Counter(f"{s}[{_hill(n)}]" for s, n in zip(symbols, neighbours))
    return " ".join(env if n == 1 else f"{env}x{n}" for env, n in sorted(counts.items()))


def bond_graph_key(numbers, positions_angstrom, scale: float = BOND_SCALE, rounds: int = 4,
                   hydrogens_on_nearest: bool = False) -> str:
    """A short key of the bond graph (bonded as in :func:`bonded_pairs` at ``scale``) that does not depend on
    which of several like atoms is which: a proton that moved to an equivalent site (malondialdehyde's O-H...O
    transfer) gives the same molecule and the same key; a bond broken or formed, or another isomer, gives another.

    ``hydrogens_on_nearest``: hydrogens bonded as :func:`bonded_pairs` says (a shared proton on one of its two
    atoms, one that left on none).

    ``rounds`` rounds of Weisfeiler-Lehman refinement (each atom's label becomes its label with the sorted labels
    of its neighbours), then the sorted multiset of labels, hashed (BLAKE2b, 16 hex digits). Isomorphic graphs
    always share the key; non-isomorphic molecular graphs of a few dozen atoms practically never do (the test
    fails only for regular graphs, such as two rings against one of the same atoms)."""
    import hashlib

    from ase.data import chemical_symbols

    def short(text: str) -> str:
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    z = np.asarray(numbers, dtype=int).reshape(-1)
    pairs = [(int(a), int(b)) for a, b in bonded_pairs(z, positions_angstrom, scale, hydrogens_on_nearest)]
    neighbours: list[list[int]] = [[] for _ in z]
    for a, b in pairs:
        neighbours[a].append(b)
        neighbours[b].append(a)
    labels = [chemical_symbols[int(a)] for a in z]
    for _ in range(rounds):
        labels = [short(labels[i] + "|" + ",".join(sorted(labels[j] for j in nbrs)))
                  for i, nbrs in enumerate(neighbours)]
    return short(" ".join(sorted(labels)))


def first_lasting_bond_change(numbers, frames_angstrom, hold: int, scale: float = BOND_SCALE) -> int | None:
    """Index of the first frame from which the molecule (:func:`bond_graph_key` at ``scale``, each hydrogen on
    its nearest atom) differs from the first frame's for ``hold`` frames in a row; None when it never does. A
    change that reverts sooner (an overstretched vibration), or that the last frames began and had fewer than
    ``hold`` frames to last, does not count. numbers: (n,); frames_angstrom: (n_frames, n, 3)."""
    frames = np.asarray(frames_angstrom, dtype=float).reshape(-1, len(np.ravel(numbers)), 3)
    if not len(frames):
        return None
    ref = bond_graph_key(numbers, frames[0], scale, hydrogens_on_nearest=True)
    since = None
    for k, pos in enumerate(frames[1:], start=1):
        if bond_graph_key(numbers, pos, scale, hydrogens_on_nearest=True) == ref:
            since = None
            continue
        since = k if since is None else since
        if k - since + 1 >= hold:
            return since
    return None


def describe_frames(numbers, positions_angstrom, hydrogens_on_nearest: bool = False) -> dict:
    """``compositions`` and ``bond_signatures`` of frames of one molecule (bonded as in :func:`bonded_pairs`).

    numbers: (n,); positions_angstrom: (n_frames, n, 3)."""
    frames = np.asarray(positions_angstrom, dtype=float)
    frames = frames.reshape(-1, *frames.shape[-2:])
    name = formula(numbers)
    return {"compositions": [name],
            "bond_signatures": {name: sorted({bond_signature(numbers, p, hydrogens_on_nearest) for p in frames})}}


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
        pattern = bond_signature(numbers, positions_angstrom, bool(domain.get("hydrogens_on_nearest", False)))
        if pattern not in patterns:
            rule = (f", a hydrogen to its nearest atom, up to {HYDROGEN_REACH:g}x"
                    if domain.get("hydrogens_on_nearest") else "")
            return (f"the bonds of this geometry ({pattern}: each atom with its bonded neighbours, bonded below "
                    f"{BOND_SCALE:g}x the summed covalent radii{rule}) are those of no {here} training frame of "
                    f"model {model_name!r} ({' | '.join(patterns)}): a bond has broken or formed, or this is another "
                    "isomer, which the model was not trained on")
    return None


def _pair_key(za, zb) -> str:
    """The card's key of an element pair: the atomic numbers, smaller first ("1-6": C-H)."""
    return f"{min(int(za), int(zb))}-{max(int(za), int(zb))}"


def longest_bonds(numbers, positions_angstrom, hydrogens_on_nearest: bool = False) -> dict[str, float]:
    """Per element pair ("6-6": C-C), the longest bond in frames of one molecule, Angstrom.

    numbers: (n,); positions_angstrom: (n_frames, n, 3). Bonded as in :func:`bonded_pairs` (the bonds
    :func:`pair_distances` checks), so the key is missing for element pairs never bonded."""
    z = np.asarray(numbers, dtype=int).reshape(-1)
    frames = np.asarray(positions_angstrom, dtype=float).reshape(-1, len(z), 3)
    longest: dict[str, float] = {}
    for pos in frames:
        bonds = bonded_pairs(z, pos, hydrogens_on_nearest=hydrogens_on_nearest)
        if not len(bonds):
            continue
        lengths = np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=1)
        for (a, b), d in zip(bonds, lengths):
            key = _pair_key(z[a], z[b])
            longest[key] = max(longest.get(key, 0.0), float(d))
    return longest


def pair_distances(domain: dict, numbers, positions_angstrom, model_name: str,
                   strict: bool = False) -> tuple[str | None, dict[str, str]]:
    """(refusal, warnings): why these pair distances are outside the training range of ``domain`` (a card's
    ``training_domain``): the refusal a sentence or None, the warnings {"close": sentence, "stretched":
    sentence} for the first pair of each kind (empty when none; with a refusal, always empty).

    Close pairs (``min_pair_distance_A``): closer than the shortest training distance of the element pair
    minus ``EXTRAPOLATION_WARNING`` (0.05 A) warns, below ``EXTRAPOLATION_ERROR`` (0.8) x it is refused.
    Stretched bonds (``max_bond_length_A``): a pair bonded here (:func:`bonded_pairs`, the bond graph of
    the signatures) longer than the longest training bond of its element pair plus ``STRETCH_WARNING``
    (0.05 A, the margin of the close pairs) warns, longer than ``STRETCH_ERROR`` (1.1) x it is refused.

    Why 1.1x, tighter than the 0.8x of compression: compressed further, a pair only climbs a repulsive wall,
    which the network has seen rising; stretched, a bond goes towards breaking, where the electronic
    structure changes character (the HOMO-LUMO gap closes; that is how a network Hamiltonian fails, see
    ``check_gap``). The shipped MD data reach about 1.12x the equilibrium length (C-C 1.70 A against
    1.53, O-H 1.16 against 0.97), so 1.1x of the training maximum is about 1.23x equilibrium, 0.35 A for
    C-C: the inflection point of a Morse curve (r_e + ln 2 / a, a ~ 2 per Angstrom for C-C, C-O, C-H),
    beyond which the restoring force falls off and nothing the model learned shapes the curve. Stretched
    as far as ``BOND_SCALE`` x the covalent radii, the pair is no longer bonded and :func:`outside`
    refuses the changed bonds instead, so the two checks cover a bond to its end.

    ``strict``: any close pair below its training minimum, and any bond beyond its training maximum, is a
    refusal (the out-of-domain fallback hands such geometries to the reference method). Element pairs the
    card has no entry for are not checked. positions_angstrom: (n, 3)."""
    from ase.data import chemical_symbols

    z = np.asarray(numbers, dtype=int).reshape(-1)
    pos = np.asarray(positions_angstrom, dtype=float).reshape(-1, 3)
    shortest = domain.get("min_pair_distance_A") or {}
    longest = domain.get("max_bond_length_A") or {}
    warnings: dict[str, str] = {}

    def label(a, b, d):
        return f"atoms {a} ({chemical_symbols[z[a]]}) and {b} ({chemical_symbols[z[b]]}) are {d:.3f} Angstrom apart"

    def pair_name(a, b):
        za, zb = sorted((int(z[a]), int(z[b])))
        return f"{chemical_symbols[za]}-{chemical_symbols[zb]}"

    i, j = np.triu_indices(len(z), 1)
    dist = np.linalg.norm(pos[i] - pos[j], axis=1)
    farthest = max((float(v) for v in shortest.values()), default=0.0)
    for k in np.argsort(dist):
        if dist[k] >= farthest:   # sorted: no later pair is below its limit
            break
        limit = shortest.get(_pair_key(z[i[k]], z[j[k]]))
        if limit is None:
            continue
        limit, a, b, d = float(limit), int(i[k]), int(j[k]), float(dist[k])
        where = f"the shortest {pair_name(a, b)} distance in model {model_name!r}'s training data ({limit:.3f} A)"
        if strict and d < limit:
            return f"{label(a, b, d)}, below {where}", {}
        if d < EXTRAPOLATION_ERROR * limit:
            return f"{label(a, b, d)}, far below {where}: outside what the model can describe", {}
        if d < limit - EXTRAPOLATION_WARNING:
            warnings.setdefault("close", f"{label(a, b, d)}, below {where}: the model extrapolates")
    if longest:
        bonds = bonded_pairs(z, pos, hydrogens_on_nearest=bool(domain.get("hydrogens_on_nearest", False)))
        lengths = np.linalg.norm(pos[bonds[:, 0]] - pos[bonds[:, 1]], axis=1) if len(bonds) else np.zeros(0)
        for k in np.argsort(-lengths):
            limit = longest.get(_pair_key(z[bonds[k, 0]], z[bonds[k, 1]]))
            if limit is None:
                continue
            limit, a, b, d = float(limit), int(bonds[k, 0]), int(bonds[k, 1]), float(lengths[k])
            where = (f"the longest {pair_name(a, b)} bond in model {model_name!r}'s training data "
                     f"({limit:.3f} A)")
            if strict and d > limit:
                return f"{label(a, b, d)}, a bond stretched beyond {where}", {}
            if d > STRETCH_ERROR * limit:
                return (f"{label(a, b, d)}, a bond stretched far beyond {where}, more than {STRETCH_ERROR:g}x: "
                        "outside what the model can describe (the bond is on its way to breaking)"), {}
            if d > limit + STRETCH_WARNING:
                warnings.setdefault("stretched", f"{label(a, b, d)}, a bond stretched beyond {where}: the "
                                                 "model extrapolates")
    return None, warnings
