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
