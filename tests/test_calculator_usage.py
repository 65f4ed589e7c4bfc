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
