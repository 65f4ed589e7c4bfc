"""Training beyond one neutral molecule: a charged molecule's model, and one model of two compositions."""
import csv
import json

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.calculator import InputError

from ase_wavecalc import WaveCalculator, cli
from ase_wavecalc.units import BOHR

TINY_MODEL = ("channels = 8\nnum_layers = 1\npair_channels = 8\npair_hidden = 16\n"
              "radial_hidden = 16\nnum_radial = 4\npair_num_radial = 4")
H3O = np.array([[0.0, 0.0, 0.12], [0.0, 1.78, -0.55], [1.54, -0.89, -0.55], [-1.54, -0.89, -0.55]])   # Bohr
WATER = np.array([[0.0, 0.0, 0.2217], [0.0, 1.4309, -0.8867], [0.0, -1.4309, -0.8867]])
H2O2 = np.array([[0.0, 1.37, -0.12], [0.0, -1.37, -0.12], [1.70, 1.64, 0.86], [-1.70, -1.64, 0.86]])


def hf_dataset(path, numbers, base, n, charge=0, seed=0):
    """n distorted copies of ``base`` (Bohr), RHF/STO-3G with energies and gradients, as a dataset file."""
    from pyscf import lib

    from ase_wavecalc import dataset
    from ase_wavecalc.reference import reference_settings, run_reference

    rng = np.random.default_rng(seed)
    db = dataset.connect(path, create=True)
    dataset.update_metadata(db, {**reference_settings("hf", "sto-3g", conv_tol=1e-10), "charge": charge})
    with db, lib.with_omp_threads(1):
        for i in range(n):
            pos = base + rng.normal(scale=0.08, size=base.shape)
            ref = run_reference(numbers, pos * BOHR, method="hf", basis="sto-3g", conv_tol=1e-10, charge=charge)
            dataset.write_frame(db, i, numbers, pos, ref)
    return path


def train_and_export(tmp_path, datasets, loss, epochs=4):
    blocks = "".join(f'[[data.datasets]]\npath = "{p}"\ntrain = 12\nval = 4\ntest = 4\n\n' for p in datasets)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[data]\nseed = 0\n\n{blocks}[model]\n{TINY_MODEL}\n\n[loss]\n{loss}\n\n"
                   "[optimizer]\nlr = 5e-3\nema_decay = 0.5\n\n"
                   f"[run]\nbatch_size = 4\nmax_epochs = {epochs}\nprogress = false\nthreads = 1\n")
    run, out = tmp_path / "run", tmp_path / "model"
    assert cli.main(["train", str(cfg), "--out", str(run), "--threads", "1", "--no-progress"]) == 0
    assert cli.main(["export", str(run), str(out), "--test"]) == 0
    return run, out


def test_a_charged_molecule_model_computes_its_charge_and_refuses_others(tmp_path):
    """H3O+ (10 electrons): the exported card says charge +1; the calculator computes the cation from the
    model alone, its Mulliken charges add up to +1 (Tr[P S] = 10 electrons), and a neutral request is
    refused (11 electrons: not even closed shell)."""
    db = hf_dataset(tmp_path / "h3o.db", [8, 1, 1, 1], H3O, 20, charge=1)
    _, model = train_and_export(tmp_path, [db], "fock_mse = 1.0\nfock_mae = 1.0", epochs=20)
    card = json.loads((model / "model.json").read_text())
    assert card["charge"] == 1
    atoms = Atoms("OH3", positions=H3O * BOHR)
    atoms.calc = WaveCalculator(model=str(model))
    assert abs(atoms.get_charges().sum() - 1.0) < 1e-8
    assert atoms.calc.get_number_of_electrons() == 10
    assert len(atoms.calc.get_eigenvalues()) == 8       # STO-3G: O 5 + 3 H
    atoms.info["charge"] = 1                             # saying so explicitly changes nothing
    assert abs(atoms.get_charges().sum() - 1.0) < 1e-8
    atoms.info["charge"] = 0
    with pytest.raises(InputError, match="charge"):
        atoms.get_charges()


def test_one_model_of_two_compositions_trains_and_tests_on_both(tmp_path):
    """Water and hydrogen peroxide in one run (batches never mix compositions): the validation error falls,
    the card reports test metrics for each dataset, and the calculator serves both molecules."""
    w = hf_dataset(tmp_path / "water.db", [8, 1, 1], WATER, 20, seed=1)
    p = hf_dataset(tmp_path / "h2o2.db", [8, 8, 1, 1], H2O2, 20, seed=2)
    run, model = train_and_export(tmp_path, [w, p], "fock_mse = 1.0\nfock_mae = 1.0", epochs=25)
    with open(run / "metrics.csv", newline="") as f:
        fock = [float(r["val_fock_mae_uha"]) for r in csv.DictReader(f)]
    assert fock[-1] < 0.7 * fock[0]
    card = json.loads((model / "model.json").read_text())
    assert set(card["test_metrics_by_dataset"]) == {"water.db", "h2o2.db"}
    for numbers, pos in (([8, 1, 1], WATER), ([8, 8, 1, 1], H2O2)):
        atoms = Atoms(numbers=numbers, positions=pos * BOHR)
        atoms.calc = WaveCalculator(model=str(model))
        assert abs(atoms.get_charges().sum()) < 1e-8
        assert atoms.calc.get_number_of_electrons() == sum(numbers)


def test_datasets_of_two_charges_are_refused_and_a_generate_charge_is_read(tmp_path, capsys):
    """A model has one charge (its card's), so datasets of different charges cannot train one model; the
    charge of a `wavecalc generate --charge` file is in its sampler record, and training reads it there."""
    from ase_wavecalc import dataset

    w = hf_dataset(tmp_path / "water.db", [8, 1, 1], WATER, 4, seed=1)
    h = hf_dataset(tmp_path / "h3o.db", [8, 1, 1, 1], H3O, 4, charge=1)
    db = dataset.connect(h, create=True)
    meta = {k: v for k, v in db.metadata.items() if k != "charge"}     # as `wavecalc generate --charge 1`
    db.metadata = {**meta, "sampler": {"mode": "file", "charge": 1}}
    from ase_wavecalc.train.data import load_table

    assert load_table(h, sha256=False).charge == 1
    blocks = "".join(f'[[data.datasets]]\npath = "{p}"\ntrain = 2\nval = 1\ntest = 1\n\n' for p in (w, h))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[data]\nseed = 0\n\n{blocks}[model]\n{TINY_MODEL}\n\n[loss]\nfock_mse = 1.0\n\n"
                   "[run]\nbatch_size = 2\nmax_epochs = 1\nprogress = false\nthreads = 1\n")
    assert cli.main(["train", str(cfg), "--out", str(tmp_path / "run"), "--threads", "1",
                     "--no-progress"]) != 0
    assert "different total charges [0, 1]" in capsys.readouterr().err
