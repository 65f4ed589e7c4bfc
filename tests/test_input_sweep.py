"""Property-based sweep of the calculator's inputs (hypothesis): random geometries, element mixes, charges
and spins, for the PySCF provider and a shipped model. Every call either returns finite results or raises one
of the documented errors, never NaN or inf and never an undocumented exception."""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import CalculationFailed, InputError, PropertyNotImplementedError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ase_wavecalc import WaveCalculator

DOCUMENTED = (InputError, CalculationFailed, PropertyNotImplementedError)


@st.composite
def molecules(draw, elements, max_atoms=4):
    n = draw(st.integers(1, max_atoms))
    numbers = draw(st.lists(st.sampled_from(elements), min_size=n, max_size=n))
    coords = draw(st.lists(st.tuples(*[st.floats(-2.0, 2.0, allow_nan=False, allow_infinity=False)] * 3),
                           min_size=n, max_size=n))
    atoms = Atoms(numbers=numbers, positions=np.array(coords, dtype=float))
    charge = draw(st.integers(-2, 2))
    if draw(st.booleans()):
        atoms.info["charge"] = charge
    if draw(st.integers(0, 4)) == 0:
        atoms.info["spin"] = draw(st.integers(1, 3))          # multiplicity
    if draw(st.integers(0, 4)) == 0:
        atoms.set_initial_magnetic_moments([draw(st.sampled_from([0.0, 1.0]))] * n)
    return atoms


@st.composite
def distorted_water(draw):
    """Water with every coordinate moved by up to 0.25 A: mostly inside a water model's domain, sometimes past
    it; plus the same charge and spin settings as ``molecules``."""
    base = np.array([[0.0, 0.0, 0.119], [0.0, 0.763, -0.477], [0.0, -0.763, -0.477]])
    shift = draw(st.lists(st.floats(-0.25, 0.25, allow_nan=False), min_size=9, max_size=9))
    atoms = Atoms("OH2", positions=base + np.reshape(shift, (3, 3)))
    if draw(st.integers(0, 3)) == 0:
        atoms.info["charge"] = draw(st.integers(-1, 1))
    if draw(st.integers(0, 3)) == 0:
        atoms.info["spin"] = draw(st.integers(1, 3))
    return atoms


def _check(atoms, calc):
    atoms.calc = calc
    try:
        e = atoms.get_potential_energy()
        f = atoms.get_forces()
    except DOCUMENTED as exc:
        assert str(exc), "an error without a message"
        return f"refused: {type(exc).__name__}"
    assert np.isfinite(e) and np.all(np.isfinite(f)) and f.shape == (len(atoms), 3)
    return "ok"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(molecules(elements=[1, 3, 6, 7, 8, 9]))
def test_pyscf_provider_inputs(atoms):
    event(_check(atoms, WaveCalculator(method="hf", basis="sto-3g", max_cycle=50)))


@pytest.fixture(scope="module")
def water_model():
    from ase_wavecalc.providers import ModelProvider

    return ModelProvider("water-pbe-def2svp")


@pytest.mark.filterwarnings("ignore:.*(extrapolates|committee energy spread).*:UserWarning")   # documented warnings
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(atoms=st.one_of(molecules(elements=[1, 8, 6], max_atoms=5), distorted_water()))
def test_model_provider_inputs(atoms, water_model):
    event(_check(atoms, WaveCalculator(provider=water_model)))


def test_the_sweep_sees_both_outcomes():
    """Not vacuous: a valid water and an overlapping pair go through the same check."""
    water = Atoms("OH2", positions=[[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]])
    assert _check(water, WaveCalculator(model="water-pbe-def2svp")) == "ok"
    bad = Atoms("OH2", positions=[[0, 0, 0], [0, 0, 0.01], [0, 1, 0]])
    assert _check(bad, WaveCalculator(model="water-pbe-def2svp")) == "refused: InputError"
