"""out_of_domain="reference": geometries a model refuses are computed with PySCF at its level of theory."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import InputError
from ase.io import read

from ase_wavecalc import WaveCalculator
from ase_wavecalc.model.network import build_model, default_config
from ase_wavecalc.providers import ModelProvider, OutOfDomainError, ReferenceFallback

CARD = {"name": "random-guarded", "level_of_theory": {"method": "rks", "xc": "pbe", "basis": "sto-3g",
                                                      "grid_level": 3},
        "training_domain": {"min_pair_distance_A": {"1-8": 0.9}}}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1, pair_channels=4,
                                      radial_hidden=8, pair_hidden=8, delta_hcore_head=True)).double()


def water(r_oh):
    return Atoms("OH2", positions=[[0, 0, 0], [r_oh, 0, 0], [-0.24, 0.93, 0]])


def test_refused_geometry_is_computed_by_the_reference_and_logged(model, tmp_path):
    log = tmp_path / "refused.traj"
    fallback = ReferenceFallback(ModelProvider(model, card=CARD), log=str(log))

    inside = water(0.96)
    inside.calc = WaveCalculator(provider=fallback)
    alone = water(0.96)
    alone.calc = WaveCalculator(provider=ModelProvider(model, card=CARD))
    assert inside.get_potential_energy() == pytest.approx(alone.get_potential_energy(), abs=1e-10)
    assert fallback.n_reference == 0 and not log.exists()

    outside = water(0.6)
    outside.calc = WaveCalculator(provider=ModelProvider(model, card=CARD))
    with pytest.raises(OutOfDomainError, match="far below the shortest H-O distance") as refused:
        outside.get_potential_energy()                            # the default: refuse
    assert 'out_of_domain="reference"' in str(refused.value)      # and the message names the way out
    outside.calc = WaveCalculator(provider=fallback)
    with pytest.warns(UserWarning, match="computed with the reference"):
        forces = outside.get_forces()
    energy = outside.get_potential_energy()
    exact = water(0.6)
    exact.calc = WaveCalculator(method="pbe", basis="sto-3g", grid_level=3)
    assert energy == pytest.approx(exact.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(forces, exact.get_forces(), atol=1e-5)
    assert fallback.n_reference == 1 and "H-O" in fallback.last_reason
    assert outside.calc.provider.describe()["reference_geometries"] == 1

    frames = read(log, ":")
    assert len(frames) == 1
    np.testing.assert_allclose(frames[0].positions, outside.positions, atol=1e-12)
    assert frames[0].get_potential_energy() == pytest.approx(energy, abs=1e-8)
    np.testing.assert_allclose(frames[0].get_forces(), forces, atol=1e-8)


def test_pairs_below_the_training_minimum_go_to_the_reference_but_a_collapsed_gap_and_bad_input_raise(model):
    """The fallback hands over as soon as a pair is closer than in training (the model alone only warns
    there); a collapsed gap comes too late in MD (the model's energy has already fallen into a hole), so it
    still raises, and so does bad input."""
    atoms = water(0.83)                               # below the 0.9 A minimum, above the model's 0.72 A refusal
    atoms.calc = WaveCalculator(provider=ModelProvider(model, card=CARD))
    with pytest.warns(UserWarning, match="the model extrapolates"):
        atoms.get_potential_energy()
    atoms.calc = WaveCalculator(provider=ReferenceFallback(ModelProvider(model, card=CARD)))
    with pytest.warns(UserWarning, match="computed with the reference"):
        atoms.get_potential_energy()
    assert atoms.calc.provider.n_reference == 1

    card = dict(CARD, training_domain={"min_homo_lumo_gap_eV": 1e4})   # every geometry's gap is "collapsed"
    atoms = water(0.96)
    atoms.calc = WaveCalculator(provider=ReferenceFallback(ModelProvider(model, card=card)))
    with pytest.raises(OutOfDomainError, match="HOMO-LUMO gap"):
        atoms.get_potential_energy()
    atoms.calc = WaveCalculator(provider=ReferenceFallback(ModelProvider(model, card=CARD)))
    atoms.positions[1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        atoms.get_potential_energy()


def test_bonds_longer_than_in_training_go_to_the_reference(model):
    """A bond longer than the card's longest training bond of its element pair (max_bond_length_A) is out of
    domain like a close pair: the model alone is silent within 0.05 A of it, the fallback hands it over at
    once and says why; a bond within the training range stays with the model."""
    card = dict(CARD, training_domain={"max_bond_length_A": {"1-8": 1.0}})
    fallback = ReferenceFallback(ModelProvider(model, card=card))
    inside = water(0.98)
    inside.calc = WaveCalculator(provider=fallback)
    inside.get_potential_energy()
    assert fallback.n_reference == 0
    atoms = water(1.03)                               # beyond 1.0 A, inside the model's 0.05 A warning margin
    atoms.calc = WaveCalculator(provider=ModelProvider(model, card=card))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.get_potential_energy()
    atoms.calc = WaveCalculator(provider=fallback)
    with pytest.warns(UserWarning, match="computed with the reference"):
        atoms.get_potential_energy()
    assert fallback.n_reference == 1
    assert "are 1.030 Angstrom apart, a bond stretched beyond the longest H-O bond" in fallback.last_reason

def test_calculator_parameters(tmp_path):
    atoms = water(0.6)                                   # O-H far below the water model's training data
    atoms.calc = WaveCalculator(model="water-pbe-def2svp")
    with pytest.raises(OutOfDomainError):
        atoms.get_potential_energy()
    log = tmp_path / "log.traj"
    atoms.calc = WaveCalculator(model="water-pbe-def2svp", out_of_domain="reference", reference_log=str(log))
    with pytest.warns(UserWarning, match="PySCF|computed with the reference"):
        energy = atoms.get_potential_energy()
    exact = water(0.6)
    exact.calc = WaveCalculator(method="pbe", basis="def2-svp")
    assert energy == pytest.approx(exact.get_potential_energy(), abs=1e-5)
    assert len(read(log, ":")) == 1
    for kwargs, match in (({"model": "water-pbe-def2svp", "out_of_domain": "pyscf"}, "out_of_domain must be"),
                          ({"out_of_domain": "reference"}, "apply to a trained model"),
                          ({"model": "water-pbe-def2svp", "reference_log": "x.traj"}, "set that too")):
        atoms.calc = WaveCalculator(**kwargs)
        with pytest.raises(InputError, match=match):
            atoms.get_potential_energy()


def test_md_command_goes_on_with_the_reference(tmp_path, capsys):
    """`wavecalc md --out-of-domain reference`: with every geometry outside the model's domain the run goes
    on (each step by PySCF), says how many steps the reference took and logs them; --reference-log alone is refused."""
    import json
    import shutil

    from ase_wavecalc.cli import main
    from ase_wavecalc.model.io import _resolve

    model = tmp_path / "water"
    shutil.copytree(_resolve("water-pbe-def2svp"), model)
    card = json.loads((model / "model.json").read_text())
    card["training_domain"] = {"min_pair_distance_A": {"1-8": 1.5}}   # every O-H bond is "too short"
    (model / "model.json").write_text(json.dumps(card))
    log, traj = tmp_path / "refused.traj", tmp_path / "md.traj"
    args = ["md", "H2O", "--model", str(model), "--steps", "2", "--trajectory", str(traj)]
    assert main(args + ["--reference-log", str(log)]) == 2
    with pytest.warns(UserWarning, match="computed with the reference"):
        assert main(args + ["--out-of-domain", "reference", "--reference-log", str(log)]) == 0
    assert "3 of 3 geometries were outside the model's domain" in capsys.readouterr().out
    assert len(read(traj, ":")) == 3 and len(read(log, ":")) == 3


def test_log_has_forces_when_the_energy_came_first_and_hamiltonian_only_models_are_refused(model, tmp_path):
    log = tmp_path / "refused.traj"
    atoms = water(0.6)
    atoms.calc = WaveCalculator(provider=ReferenceFallback(ModelProvider(model, card=CARD), log=str(log)))
    with pytest.warns(UserWarning):
        atoms.get_potential_energy()
    forces = atoms.get_forces()
    (frame,) = read(log, ":")
    np.testing.assert_allclose(frame.get_forces(), forces, atol=1e-8)

    torch.manual_seed(0)
    hamiltonian_only = build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1,
                                                  pair_channels=4, radial_hidden=8, pair_hidden=8)).double()
    with pytest.raises(ValueError, match="Hamiltonian only"):
        ReferenceFallback(ModelProvider(hamiltonian_only, card=CARD))
