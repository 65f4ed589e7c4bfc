"""WaveCalculator as other programs use it: parameters that contradict a model, pickling (multiprocessing,
ASE's parallel tools), one calculator shared by threads, results that ASE's writers and
SinglePointCalculator take, and the parameter spellings of other ASE calculators (geomeTRIC's ``mult``)."""
import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import InputError

from ase_wavecalc import WaveCalculator

MODEL = "water-pbe-def2svp"


def _water(seed=0, scale=0.03):
    atoms = molecule("H2O")
    atoms.positions += np.random.default_rng(seed).normal(scale=scale, size=atoms.positions.shape)
    return atoms


# ---------------------------------------------------------------------------------------------- item 3

@pytest.mark.parametrize("kwargs, words", [
    (dict(method="b3lyp", basis="sto-3g"), "method='b3lyp', basis='sto-3g'"),
    (dict(method="hf"), "method='hf'"),
    (dict(basis="cc-pvtz"), "basis='cc-pvtz'"),
])
def test_a_model_refuses_another_level_of_theory(kwargs, words):
    """model= with a method or basis other than the model's: InputError naming both, no energy of
    another level under the asked-for name."""
    atoms = _water()
    atoms.calc = WaveCalculator(model=MODEL, **kwargs)
    with pytest.raises(InputError, match=f"model '{MODEL}' was trained on PBE/def2-svp.*{words}"):
        atoms.get_potential_energy()


def test_a_model_accepts_its_own_level_spelled_out_and_set_checks_too():
    atoms = _water()
    plain = WaveCalculator(model=MODEL)
    atoms.calc = plain
    energy = atoms.get_potential_energy()
    spelled = WaveCalculator(model=MODEL, method="PBE", basis="def2-SVP")
    assert spelled.get_potential_energy(atoms) == pytest.approx(energy, abs=1e-9)
    spelled.set(method="b3lyp")
    with pytest.raises(InputError, match="method='b3lyp'"):
        spelled.get_potential_energy(atoms)
    # a transfer model was trained on two levels: either one may be named
    cc = WaveCalculator(model="water-ccsdt-transfer", method="ccsd(t)", basis="cc-pVTZ")
    assert np.isfinite(cc.get_potential_energy(atoms))
    with pytest.raises(InputError, match=r"PBE/def2-svp \(orbitals\) and CCSD\(T\)/cc-pvtz \(energies\)"):
        WaveCalculator(model="water-ccsdt-transfer", method="mp2").get_potential_energy(atoms)


# ---------------------------------------------------------------------------------------------- item 4

@pytest.mark.parametrize("kwargs", [dict(model=MODEL), dict(model="water-pbe-def2svp-hamiltonian"),
                                    dict(model=MODEL, out_of_domain="reference"),
                                    dict(method="hf", basis="sto-3g")])
def test_a_used_calculator_and_its_atoms_pickle(kwargs):
    """After energy, forces, dipole and the orbitals (a readout model's deferred Hamiltonian, its committee
    forces): the calculator and an Atoms carrying it pickle, and the copies give the same results."""
    import pickle

    atoms = _water(seed=1)
    atoms.calc = WaveCalculator(**kwargs)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    dipole, homo_lumo = atoms.get_dipole_moment(), atoms.calc.get_homo_lumo()
    committee = kwargs == dict(model=MODEL)
    if committee:
        std = atoms.calc.get_property("forces_std", atoms)
    calc = pickle.loads(pickle.dumps(atoms.calc))
    copy = pickle.loads(pickle.dumps(atoms))
    assert atoms.get_potential_energy() == energy           # the original keeps its results
    for got in (calc.get_potential_energy(atoms), copy.get_potential_energy()):
        assert got == pytest.approx(energy, abs=1e-8)
    np.testing.assert_allclose(copy.get_forces(), forces, rtol=0, atol=1e-8)
    np.testing.assert_allclose(copy.get_dipole_moment(), dipole, rtol=0, atol=1e-8)
    np.testing.assert_allclose(copy.calc.get_homo_lumo(), homo_lumo, rtol=0, atol=1e-8)
    if committee:
        np.testing.assert_allclose(copy.calc.get_property("forces_std", copy), std, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------- item 5

def test_threads_sharing_a_calculator_get_their_own_geometrys_results():
    """Two threads, two geometries, one calculator. Thread B asks once thread A's calculation has written
    its results, and A then waits (up to 2 s) for B's calculation: without the calculator's lock B's
    results would be what A reads; with it, B waits for A's whole request."""
    import threading

    calc = WaveCalculator(model=MODEL)
    a, b = _water(seed=2), _water(seed=3, scale=0.06)
    expected = {}
    for name, atoms in (("a", a), ("b", b)):
        atoms.calc = calc
        expected[name] = (atoms.get_potential_energy(), atoms.get_forces())
    assert abs(expected["a"][0] - expected["b"][0]) > 1e-3
    calc.reset()
    a_written, b_done = threading.Event(), threading.Event()
    real = calc.calculate

    def calculate(atoms=None, properties=("energy",), system_changes=()):
        real(atoms, properties, system_changes)
        if atoms is a:
            a_written.set()
            b_done.wait(timeout=2.0)      # long enough for B to overwrite the results if nothing stops it
        elif atoms is b:
            b_done.set()

    calc.calculate = calculate
    got, errors = {}, []

    def run(name, atoms):
        try:
            if name == "b":
                a_written.wait()
            got[name] = (atoms.get_potential_energy(), atoms.get_forces())
        except Exception as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("a", a)), threading.Thread(target=run, args=("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for name in ("a", "b"):
        assert got[name][0] == pytest.approx(expected[name][0], abs=1e-8)
        np.testing.assert_allclose(got[name][1], expected[name][1], rtol=0, atol=1e-8)


def test_many_requests_from_two_threads():
    import threading

    calc = WaveCalculator(model=MODEL)
    geometries = [_water(seed=s) for s in (4, 5)]
    expected = []
    for atoms in geometries:
        atoms.calc = calc
        expected.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_dipole_moment()))
    wrong = []

    def run(k):
        atoms = geometries[k]
        for _ in range(15):
            e, f, d = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_dipole_moment()
            if (abs(e - expected[k][0]) > 1e-8 or np.abs(f - expected[k][1]).max() > 1e-8
                    or np.abs(d - expected[k][2]).max() > 1e-8):
                wrong.append(k)

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


# ---------------------------------------------------------------------------------------------- item 6

def test_results_are_what_ase_takes_and_the_spreads_travel_in_atoms_info(tmp_path):
    """calc.results holds only ASE's properties (SinglePointCalculator takes them); energy_std and
    forces_std come from get_property / calc.uncertainty, and atoms.info["energy_std"] survives ASE's
    trajectory and extxyz files."""
    from ase.calculators.calculator import PropertyNotImplementedError, all_properties
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import Trajectory, read, write

    atoms = _water(seed=6)
    atoms.calc = WaveCalculator(model=MODEL)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    std_f = atoms.calc.get_property("forces_std", atoms)
    atoms.get_dipole_moment()
    std_e = atoms.calc.get_property("energy_std", atoms)
    assert std_e > 0 and std_f.shape == (3, 3) and std_f.max() > 0
    assert set(atoms.calc.results) <= set(all_properties)
    assert atoms.info["energy_std"] == std_e == atoms.calc.uncertainty["energy_std"]
    single = atoms.copy()
    single.calc = SinglePointCalculator(single, **atoms.calc.results)
    assert single.get_potential_energy() == energy
    with Trajectory(tmp_path / "x.traj", "w") as traj:
        traj.write(atoms)
    write(tmp_path / "x.extxyz", atoms)
    for back in (read(tmp_path / "x.traj"), read(tmp_path / "x.extxyz")):
        assert back.info["energy_std"] == pytest.approx(std_e, rel=1e-12)
        assert back.get_potential_energy() == pytest.approx(energy, abs=1e-8)
    # another geometry: its own spread, in the Atoms; a model without a committee removes a stale one
    other = _water(seed=7, scale=0.06)
    other.calc = atoms.calc
    other.get_potential_energy()
    assert other.info["energy_std"] == atoms.calc.get_property("energy_std", other) != std_e
    other.calc = WaveCalculator(model="water-pbe-def2svp-hamiltonian")
    other.get_potential_energy()
    assert "energy_std" not in other.info and not other.calc.uncertainty
    with pytest.raises(PropertyNotImplementedError, match="no committee"):
        other.calc.get_property("energy_std", other)


def test_md_trajectory_keeps_the_energy_spread_of_every_frame(tmp_path):
    """`wavecalc md` with a committee model: each written frame carries its own energy_std (that of a fresh
    calculation at its positions)."""
    from ase.io import read

    from ase_wavecalc.cli import main

    traj = tmp_path / "md.traj"
    assert main(["md", "H2O", "--model", MODEL, "--steps", "4", "--trajectory", str(traj)]) == 0
    from ase_wavecalc.cli import build_parser
    from ase_wavecalc.md import make_calculator

    # wavecalc md compiles in the background after AUTO_AFTER steps (a library calculator does not)
    md_calc = make_calculator(build_parser("md").parse_args(["md", "H2O", "--model", MODEL]))
    assert md_calc.parameters["compile"] == "auto"
    assert WaveCalculator(model=MODEL).parameters["compile"] is False
    frames = read(traj, ":")
    assert len(frames) == 5
    fresh = WaveCalculator(model=MODEL)
    spreads = [f.info["energy_std"] for f in frames]
    for frame, std in zip(frames, spreads):
        probe = frame.copy()
        assert fresh.get_property("energy_std", probe) == pytest.approx(std, rel=1e-9, abs=1e-12)
    assert len(set(spreads)) > 1


# ---------------------------------------------------------------------------------------------- item 7

def test_multiplicity_spellings_of_other_ase_calculators():
    """mult (geomeTRIC's ASE engine, ORCA, Gaussian) and multiplicity (Psi4) are 2S + 1, taken as spin
    (2S); a triplet is refused as an open shell, contradictions and nonsense as InputError."""
    atoms = _water(seed=8)
    atoms.calc = WaveCalculator(model=MODEL)
    energy = atoms.get_potential_energy()
    for kwargs in (dict(model=MODEL, mult=1), dict(model=MODEL, multiplicity=1, spin=0),
                   dict(model=MODEL, mult=1.0, multiplicity=1)):
        calc = WaveCalculator(**kwargs)
        assert calc.parameters["spin"] == 0 and "mult" not in calc.parameters
        assert calc.get_potential_energy(atoms) == pytest.approx(energy, abs=1e-9)
    calc = WaveCalculator(method="hf", basis="sto-3g", mult=3)
    assert calc.parameters["spin"] == 2
    with pytest.raises(InputError, match="closed-shell"):
        calc.get_potential_energy(atoms)
    calc.set(mult=1)
    assert calc.parameters["spin"] == 0 and np.isfinite(calc.get_potential_energy(atoms))
    for kwargs, words in ((dict(mult=1, spin=2), "contradicting spins: mult=1, spin=2"),
                          (dict(mult=2, multiplicity=1), "contradicting spins"),
                          (dict(mult=0), "2S \\+ 1 \\(>= 1\\)"), (dict(multiplicity="singlet"), "must be a number"),
                          (dict(mult=1.5), "must be an integer")):
        with pytest.raises(InputError, match=words):
            WaveCalculator(model=MODEL, **kwargs)
