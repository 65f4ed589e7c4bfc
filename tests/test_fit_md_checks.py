"""How a fit and the MD benchmarks tell a molecule that fell apart from one that only moved a proton, and that
active learning labels the geometry a model refused."""
from __future__ import annotations

import numpy as np
from ase.build import molecule
from ase.calculators.calculator import Calculator, InputError, all_changes

from ase_wavecalc.domain import bond_graph_key, bonded_pairs, first_lasting_bond_change


def _acid_with_proton_moved():
    """Acetic acid, and the same atoms with the acidic proton put on the other oxygen (0.97 A, pointing away
    from the carbon): the same molecule with two oxygens' roles exchanged."""
    acid = molecule("CH3COOH")
    z = acid.numbers
    oxygens = [i for i in range(len(z)) if z[i] == 8]
    h_acid = next(i for i in range(len(z)) if z[i] == 1
                  and min(acid.get_distance(i, o) for o in oxygens) < 1.1)
    o_with_h = min(oxygens, key=lambda o: acid.get_distance(h_acid, o))
    o_other = next(o for o in oxygens if o != o_with_h)
    carbon = next(i for i in range(len(z)) if z[i] == 6 and acid.get_distance(i, o_other) < 1.5)
    moved = acid.copy()
    away = moved.positions[o_other] - moved.positions[carbon]
    moved.positions[h_acid] = moved.positions[o_other] + 0.97 * away / np.linalg.norm(away)
    return acid, moved, h_acid


def test_a_proton_moved_to_an_equivalent_site_keeps_the_bond_graph_a_broken_bond_does_not():
    acid, moved, h = _acid_with_proton_moved()
    pairs = {tuple(p) for p in bonded_pairs(acid.numbers, acid.positions)}
    pairs_moved = {tuple(p) for p in bonded_pairs(moved.numbers, moved.positions)}
    assert pairs != pairs_moved          # other atoms bonded: a pair-by-pair check calls it broken
    assert bond_graph_key(acid.numbers, acid.positions) == bond_graph_key(moved.numbers, moved.positions)
    gone = acid.copy()
    out = gone.positions[h] - gone.get_center_of_mass()
    gone.positions[h] += 3.0 * out / np.linalg.norm(out)
    assert bond_graph_key(acid.numbers, acid.positions) != bond_graph_key(gone.numbers, gone.positions)
    # the key sees whole graphs: ethanol and dimethyl ether differ, a permutation does not
    ethanol, ether = molecule("CH3CH2OH"), molecule("CH3OCH3")
    assert bond_graph_key(ethanol.numbers, ethanol.positions) != bond_graph_key(ether.numbers, ether.positions)
    order = np.random.default_rng(3).permutation(len(ethanol))
    assert (bond_graph_key(ethanol.numbers[order], ethanol.positions[order])
            == bond_graph_key(ethanol.numbers, ethanol.positions))


def test_a_proton_shared_by_two_oxygens_belongs_to_the_molecule_a_lost_one_does_not():
    from ase import Atoms

    def zundel(x_shared):
        """H5O2+ with its oxygens 2.4 A apart on the x axis and the shared proton at (x_shared, y, 0)."""
        return Atoms("OOHHHHH", positions=[(0, 0, 0), (2.4, 0, 0), (-0.33, 0.9, 0), (-0.33, -0.45, 0.78),
                                           (2.73, 0.9, 0), (2.73, -0.45, -0.78), x_shared])

    z = zundel((1.0, 0, 0)).numbers
    key = bond_graph_key(z, zundel((1.0, 0, 0)).positions, 1.25, hydrogens_on_nearest=True)  # H3O+ ... H2O
    shared = zundel((1.2, 0, 0)).positions                                    # 1.2 A from each oxygen
    assert bond_graph_key(z, shared, 1.25) != bond_graph_key(z, zundel((1.0, 0, 0)).positions, 1.25)
    assert bond_graph_key(z, shared, 1.25, hydrogens_on_nearest=True) == key
    assert bond_graph_key(z, zundel((1.4, 0, 0)).positions, 1.25, hydrogens_on_nearest=True) == key  # moved on
    lost = zundel((1.2, 2.5, 0)).positions                                    # 2.8 A from the oxygens
    assert bond_graph_key(z, lost, 1.25, hydrogens_on_nearest=True) != key


def test_a_transient_change_is_not_a_broken_molecule_a_lasting_one_is():
    acid, moved, h = _acid_with_proton_moved()
    far = acid.copy()
    far.positions[h] += np.array([4.0, 0.0, 0.0])
    z = acid.numbers
    transfer = [acid.positions] * 5 + [far.positions] * 3 + [moved.positions] * 10   # 3 frames in flight
    assert first_lasting_bond_change(z, transfer, hold=5) is None
    lost = [acid.positions] * 5 + [far.positions] * 8
    assert first_lasting_bond_change(z, lost, hold=5) == 5
    ends_stretched = [acid.positions] * 5 + [far.positions] * 2     # begun too late to tell: not counted
    assert first_lasting_bond_change(z, ends_stretched, hold=5) is None


class _SpringRefusingStretch(Calculator):
    """H2 on a harmonic spring (k = 30 eV/A^2, r0 = 0.74 A) that refuses bonds longer than 0.85 A, as a model
    refuses a geometry outside its training domain; a committee spread of 1 meV."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, model=None):
        super().__init__()
        self.provider = type("Provider", (), {"card": {}})()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions[1] - self.atoms.positions[0]
        r = float(np.linalg.norm(d))
        if r > 0.85:
            raise InputError(f"bond of {r:.3f} A longer than any in training")
        f = -30.0 * (r - 0.74) * d / r
        self.results = {"energy": 15.0 * (r - 0.74) ** 2, "forces": np.array([-f, f]), "energy_std": 0.001}


def test_active_learning_labels_the_geometry_the_model_refused(monkeypatch):
    import ase_wavecalc.calculator as calculator
    from ase_wavecalc.fit.active import explore

    monkeypatch.setattr(calculator, "WaveCalculator", _SpringRefusingStretch)
    h2 = molecule("H2")
    out = explore("unused", h2, temperatures=[3000.0], steps=4000, friction=0.01, select_every=5,
                  max_frames=10, spread_quantile=0.9, seed=1, log=lambda *a: None)
    assert out["runs"][0]["stopped"], "the hot spring must stretch past what the calculator accepts"
    lengths = [a.get_distance(0, 1) for a in out["frames"]]
    assert max(lengths) > 0.85        # the refused geometry itself is among the frames to label
    assert all(a.calc is None for a in out["frames"])


def test_md_sampling_keeps_a_proton_in_flight_not_a_lost_one():
    from ase_wavecalc.fit.candidates import TransientPatterns

    acid, moved, h = _acid_with_proton_moved()
    far = acid.copy()
    far.positions[h] += np.array([4.0, 0.0, 0.0])
    seen = TransientPatterns(acid.numbers, acid.positions, hold=5, max_keep=4)
    trajectory = [acid] * 3 + [far] * 3 + [moved] * 4 + [far] * 2 + [acid] * 2 + [far] * 7 + [acid] * 3
    for atoms in trajectory:
        seen(atoms)
    # two excursions of 3 and 2 frames came back (to the moved proton, then to the start): their middle frames;
    # the third lasted past the 5-step hold: a lost proton, not kept, and the collection stopped
    assert len(seen.frames) == 2 and seen.done
    for f in seen.frames:
        assert np.allclose(f, far.positions)
    steady = TransientPatterns(acid.numbers, acid.positions, hold=5)
    for atoms in [acid] * 5 + [moved] * 5:          # a proton that hops in one step: nothing in flight to keep
        steady(atoms)
    assert steady.frames == [] and not steady.done


def test_a_hydrogen_is_on_the_atom_nearest_relative_to_their_radii():
    """S-H 1.40 A is a bond (S is larger: 1.05 + 0.31 A radii), O-H 1.38 A on the other side is not."""
    from ase import Atoms

    sho = Atoms("SHO", positions=[(0, 0, 0), (1.40, 0, 0), (2.78, 0, 0)])
    pairs = {tuple(p) for p in bonded_pairs(sho.numbers, sho.positions, hydrogens_on_nearest=True)}
    assert pairs == {(0, 1)}
