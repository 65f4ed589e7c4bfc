"""A model refuses molecules it was not trained on: another molecule of the same elements, an isomer, a
broken bond (``ase_wavecalc/domain.py``), and never refuses the geometries of its own data."""
import glob
import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

from ase_wavecalc import WaveCalculator
from ase_wavecalc.domain import (STRETCH_ERROR, bond_signature, describe_frames, formula, longest_bonds, merge,
                                 outside, pair_distances)
from ase_wavecalc.fit.card import dataset_folder
from ase_wavecalc.providers import OutOfDomainError

ROOT = Path(__file__).resolve().parents[1]


def test_formula_and_bonds_of_known_molecules():
    """Hill formulas and bonding patterns of textbook structures (ase.build's G2 geometries): isomers differ."""
    expected = {"CH3CH2OH": ("C2H6O", "C[CH2O] C[CH3] H[C]x5 H[O] O[CH]"),
                "CH3OCH3": ("C2H6O", "C[H3O]x2 H[C]x6 O[C2]"),
                "CH3OH": ("CH4O", "C[H3O] H[C]x3 H[O] O[CH]"), "H2O": ("H2O", "H[O]x2 O[H2]"),
                "H2O2": ("H2O2", "H[O]x2 O[HO]x2"),
                "trans-butane": ("C4H10", "C[C2H2]x2 C[CH3]x2 H[C]x10"), "isobutane": ("C4H10", "C[C3H] C[CH3]x3 H[C]x10")}
    for name, (hill, bonds) in expected.items():
        atoms = molecule(name)
        assert formula(atoms.numbers) == hill
        assert bond_signature(atoms.numbers, atoms.positions) == bonds
        order = np.random.default_rng(0).permutation(len(atoms))        # atom order does not matter
        assert bond_signature(atoms.numbers[order], atoms.positions[order]) == bonds
    water = molecule("H2O")
    water.set_distance(0, 1, 2.0, fix=0)                         # one O-H pulled apart
    assert bond_signature(water.numbers, water.positions) == "H[O] H[] O[H]"
    with pytest.raises(ValueError, match="3 atomic numbers but 2 positions"):
        bond_signature(water.numbers, water.positions[:2])


def test_bonds_are_checked_against_their_own_molecule():
    """A model of water and H2O2: both intact molecules are accepted; H2O2 with its O-O bond broken is
    refused, with H2O2's own training pattern (not water's) in the message."""
    pair = [molecule("H2O"), molecule("H2O2")]
    domain = merge([describe_frames(a.numbers, a.positions[None]) for a in pair])
    assert domain["compositions"] == ["H2O", "H2O2"]
    for atoms in pair:
        assert outside(domain, atoms.numbers, atoms.positions, "m") is None
    broken = molecule("H2O2")
    o1, o2 = [i for i, s in enumerate(broken.get_chemical_symbols()) if s == "O"]
    broken.set_distance(o1, o2, 2.2, fix=0.5)
    reason = outside(domain, broken.numbers, broken.positions, "m")
    assert "(H[O]x2 O[H]x2: " in reason and "no H2O2 training frame of model 'm' (H[O]x2 O[HO]x2)" in reason


def _ethanol_broken_oh():
    atoms = molecule("CH3CH2OH")
    o = atoms.get_chemical_symbols().index("O")
    h = min((i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "H"),
            key=lambda i: atoms.get_distance(o, i))
    atoms.set_distance(o, h, 1.8, fix=0)
    return atoms


@pytest.mark.parametrize("model, atoms, message", [
    ("ethanol-pbe-def2svp", molecule("CH3OH"), "trained on C2H6O only, and this molecule is CH4O"),
    ("ethanol-pbe-def2svp", molecule("CH3OCH3"), r"bonds of this geometry \(C\[H3O\]x2 H\[C\]x6 O\[C2\]:.*another isomer"),
    ("ethanol-pbe-def2svp", _ethanol_broken_oh(), r"\(C\[CH2O\] C\[CH3\] H\[C\]x5 H\[\] O\[C\]:.*a bond has broken"),
    ("water-pbe-def2svp", molecule("H2O2"), "trained on H2O only, and this molecule is H2O2"),
], ids=["methanol", "dimethyl-ether", "broken-OH", "H2O2"])
def test_shipped_models_refuse_what_they_were_not_trained_on(model, atoms, message):
    """Run anyway, the ethanol model is off by 370 eV on methanol and by 455 meV/A in the forces of dimethyl
    ether (measured when this check was added): no number may come back."""
    atoms.calc = WaveCalculator(model=model)
    with pytest.raises(OutOfDomainError, match=message):
        atoms.get_potential_energy()


def test_shipped_model_accepts_its_own_molecule():
    atoms = molecule("CH3CH2OH")
    atoms.calc = WaveCalculator(model="ethanol-pbe-def2svp")
    assert np.isfinite(atoms.get_potential_energy())


@pytest.mark.parametrize("option, warning", [
    ({"out_of_domain": "reference"}, "computed with the reference"),
    ({"refine": "scf"}, "trained on H2O only.*default guess"),
], ids=["out_of_domain=reference", "refine=scf"])
def test_a_refused_molecule_goes_to_pyscf_where_asked(option, warning):
    """out_of_domain="reference" computes a refused molecule with PySCF at the model's level; refine="scf",
    PySCF's SCF either way, starts it from PySCF's default guess instead of the model's density. Both warn."""
    atoms = molecule("H2O2")
    atoms.calc = WaveCalculator(model="water-pbe-def2svp", **option)
    with pytest.warns(UserWarning, match=warning):
        energy = atoms.get_potential_energy()
    exact = molecule("H2O2")
    exact.calc = WaveCalculator(method="pbe", basis="def2-svp", grid_level=3)
    assert energy == pytest.approx(exact.get_potential_energy(), abs=1e-5)


def _shipped_cards():
    return sorted(glob.glob(str(ROOT / "models" / "*" / "model.json"))
                  + glob.glob(str(ROOT / "benchmarks" / "baselines" / "*" / "model.json")))


def _parts(card, entry) -> list[str]:
    """The committed npz parts of one of a card's datasets (``data/<name>/``, or a fit's ``--data-out`` folder)."""
    return sorted(glob.glob(str(dataset_folder(card, entry["name"], ROOT) / "part-*.npz")))


@pytest.mark.parametrize("card_path", _shipped_cards(), ids=lambda p: Path(p).parent.name)
def test_no_frame_of_a_shipped_models_data_is_refused(card_path):
    """Every committed frame of the datasets behind a shipped model (300-900 K MD and the active-learning
    edges) is inside its recorded compositions and bonds: the check refuses chemistry, not thermal motion."""
    card = json.loads(Path(card_path).read_text())
    domain = card["training_domain"]
    assert domain.get("compositions") and domain.get("bond_signatures"), f"{card_path}: domain not recorded"
    assert domain.get("max_bond_length_A"), f"{card_path}: longest bonds not recorded"
    n = 0
    for entry in card["split"]["datasets"]:
        for part in _parts(card, entry):
            with np.load(part) as data:
                for positions in data["positions"]:            # Angstrom
                    assert outside(domain, data["numbers"], positions, card["name"]) is None
                    refusal, _ = pair_distances(domain, data["numbers"], positions, card["name"])
                    assert refusal is None, f"{part}: {refusal}"
                    n += 1
    assert n >= 300, f"{card_path}: found only {n} committed frames of its datasets"


def _training_frames(card):
    """(numbers, (n, N, 3) Angstrom) of each dataset's training frames, where the card's split is
    reproduced by ``split_frames`` (frame ids: the order of the committed parts, as import-npz assigns them).
    None for splits of only some frames (transfer models and Delta baselines train on the frames with
    CCSD(T) labels and hold out another model's test frames)."""
    from ase_wavecalc.train.data import split_frames

    out = []
    for entry in card["split"]["datasets"]:
        numbers, frames = None, []
        parts = _parts(card, entry)
        assert parts, f"{card['name']}: no committed parts of its dataset {entry['name']}"
        for part in parts:
            with np.load(part) as data:
                numbers = data["numbers"]
                frames.append(data["positions"])
        frames = np.concatenate(frames)
        ids = split_frames(range(len(frames)), entry["train"], entry["val"], entry["test"], card["split"]["seed"])
        if entry["train"] + entry["val"] + entry["test"] != len(frames) or ids["test"] != list(entry["test_frames"]):
            return None
        out.append((numbers, frames[ids["train"]]))
    return out


@pytest.mark.parametrize("card_path", _shipped_cards(), ids=lambda p: Path(p).parent.name)
def test_recorded_longest_bonds_are_those_of_the_training_frames(card_path):
    """The card's max_bond_length_A is the longest bond of each element pair over its training frames
    (rounded up to 1e-4 A), so no training frame is beyond it even in the fallback's strict check."""
    card = json.loads(Path(card_path).read_text())
    sets = _training_frames(card)
    if sets is None:
        pytest.skip("the split is not reproduced from the committed parts (held out from another model's test "
                    "frames, or a fit's split of the frames labelled when its run began)")
    recorded = card["training_domain"]["max_bond_length_A"]
    nearest = bool(card["training_domain"].get("hydrogens_on_nearest", False))     # the card's bond rule
    longest: dict = {}
    for numbers, frames in sets:
        for key, d in longest_bonds(numbers, frames, hydrogens_on_nearest=nearest).items():
            longest[key] = max(longest.get(key, 0.0), d)
        for positions in frames:
            domain = {"max_bond_length_A": recorded, "hydrogens_on_nearest": nearest}
            assert pair_distances(domain, numbers, positions, "m", strict=True) == (None, {})
    assert set(longest) == set(recorded)
    for key, d in longest.items():
        assert d <= recorded[key] < d + 1e-4, key


def _ethanol_cc_stretched(length):
    """ase.build's ethanol with the C-C bond at ``length`` Angstrom (the methyl group moved rigidly)."""
    atoms = molecule("CH3CH2OH")
    symbols = atoms.get_chemical_symbols()
    c1, c2 = [i for i, s in enumerate(symbols) if s == "C"]
    methyl = [c1] + [i for i, s in enumerate(symbols) if s == "H" and atoms.get_distance(c1, i) < 1.2]
    atoms.set_distance(c2, c1, length, fix=0, indices=methyl)
    return atoms


def test_a_stretched_bond_warns_then_is_refused():
    """#23: a saddle search on ethanol-pbe-def2svp ended with C-C at 1.80 A, beyond every training frame
    (1.695 A), without a word, since the bond graph only changes at 1.3x the covalent radii (1.98 A). Now
    1.80 A warns (longer than the training maximum + 0.05 A) and 1.90 A (> 1.1x) is refused; the ordinary
    geometry does neither."""
    import warnings

    card = json.loads((ROOT / "models" / "ethanol-pbe-def2svp" / "model.json").read_text())
    longest = card["training_domain"]["max_bond_length_A"]["6-6"]
    assert longest + 0.05 < 1.80 < STRETCH_ERROR * longest < 1.90
    calc = WaveCalculator(model="ethanol-pbe-def2svp")
    atoms = _ethanol_cc_stretched(1.52)
    atoms.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(atoms.get_potential_energy())
    atoms = _ethanol_cc_stretched(1.80)
    assert bond_signature(atoms.numbers, atoms.positions) == "C[CH2O] C[CH3] H[C]x5 H[O] O[CH]"
    atoms.calc = calc
    with pytest.warns(UserWarning, match=r"\(C\) are 1.800 Angstrom apart, a bond stretched beyond the longest "
                                         r"C-C bond in model 'ethanol-pbe-def2svp''s training data \(1.695 A\)"):
        assert np.isfinite(atoms.get_potential_energy())
    atoms = _ethanol_cc_stretched(1.90)
    atoms.calc = calc
    with pytest.raises(OutOfDomainError, match=r"1.900 Angstrom apart, a bond stretched far beyond the longest C-C"):
        atoms.get_potential_energy()


def test_stretched_bonds_are_checked_on_the_bond_graph_only():
    """Only pairs bonded in this geometry count (a non-bonded H...H far apart is no stretched bond), each
    against its own element pair; a card without the key checks nothing; strict refuses any excess."""
    water = molecule("H2O")
    water.set_distance(0, 1, 1.10, fix=0)
    domain = {"max_bond_length_A": {"1-8": 1.0}}
    refusal, warned = pair_distances(domain, water.numbers, water.positions, "m")
    assert refusal is None and "atoms 0 (O) and 1 (H) are 1.100 Angstrom apart" in warned["stretched"]
    assert pair_distances({}, water.numbers, water.positions, "m") == (None, {})
    assert pair_distances({"max_bond_length_A": {"1-1": 0.5}}, water.numbers, water.positions, "m") == (None, {})
    water.set_distance(0, 1, 1.03, fix=0)
    assert pair_distances(domain, water.numbers, water.positions, "m") == (None, {})
    assert "a bond stretched beyond" in pair_distances(domain, water.numbers, water.positions, "m", strict=True)[0]
    water.set_distance(0, 1, 1.15, fix=0)
    assert "stretched far beyond" in pair_distances(domain, water.numbers, water.positions, "m")[0]
    assert longest_bonds(water.numbers, water.positions[None]) == pytest.approx({"1-8": 1.15})


def test_a_shared_proton_is_checked_by_its_length_not_refused_for_its_pattern():
    """In cards with ``hydrogens_on_nearest`` a hydrogen is on its nearest atom: a proton between two oxygens
    (1.2 A from each: bonded to both by the cutoff) keeps the training pattern and is judged by the O-H length;
    one pulled further off its oxygens is refused for its length, and one gone altogether for its pattern. Cards without
    the key keep the cutoff rule."""
    from ase import Atoms

    def zundel(x_shared):
        """H5O2+ with its oxygens 2.4 A apart and the shared proton at ``x_shared``."""
        return Atoms("OOHHHHH", positions=[(0, 0, 0), (2.4, 0, 0), (-0.33, 0.9, 0), (-0.33, -0.45, 0.78),
                                           (2.73, 0.9, 0), (2.73, -0.45, -0.78), x_shared])

    start = zundel((1.0, 0, 0))
    frames = np.stack([zundel((x, 0, 0)).positions for x in (0.98, 1.0, 1.05, 1.1)])
    z = start.numbers
    domain = {**describe_frames(z, frames, hydrogens_on_nearest=True),
              "max_bond_length_A": longest_bonds(z, frames, hydrogens_on_nearest=True), "hydrogens_on_nearest": True}
    assert domain["max_bond_length_A"]["1-8"] == pytest.approx(1.1)
    shared = zundel((1.2, 0, 0)).positions
    assert outside(domain, z, shared, "m") is None
    refusal, warned = pair_distances(domain, z, shared, "m")
    assert refusal is None and "stretched" in warned                        # 1.2 A: past 1.1 + 0.05, below 1.21
    refusal, _ = pair_distances(domain, z, zundel((1.2, 0.7, 0)).positions, "m")
    assert refusal is not None and "H-O bond" in refusal                    # 1.39 A > 1.1 x 1.1 A
    assert "formed" in outside(domain, z, zundel((1.2, 2.5, 0)).positions, "m")   # 2.8 A from every oxygen
    cutoff = {**describe_frames(z, frames), "max_bond_length_A": longest_bonds(z, frames)}
    assert "formed" in outside(cutoff, z, shared, "m")                    # H[O2]: a pattern never trained on
