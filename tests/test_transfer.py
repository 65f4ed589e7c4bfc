"""Transfer learning to a higher level of theory: correlated labels, their storage, `wavecalc finetune`."""
import json
import shutil

import numpy as np
import pytest
import torch
from _train_helpers import quiet, write_tiny_config

from ase_wavecalc import dataset
from ase_wavecalc.correlated import run_correlated
from ase_wavecalc.labels import import_label_npz, label_frames

WATER = np.array([[0.0, 0.0, 0.2217], [0.0, 1.4309, -0.8867], [0.0, -1.4309, -0.8867]])  # Bohr


def _central_difference(method, positions, atom, axis, step=1e-3):
    e = []
    for sign in (1, -1):
        p = positions.copy()
        p[atom, axis] += sign * step
        e.append(float(run_correlated([8, 1, 1], p, method, "sto-3g", gradient=False)["e_tot"]))
    return (e[0] - e[1]) / (2 * step)


@pytest.mark.parametrize("method", ["ccsd(t)", "mp2"])
def test_correlated_gradient_is_the_derivative_of_the_energy(method):
    """CCSD(T) forces come from the (T)-lambda amplitudes: PySCF's default (the CCSD lambda amplitudes)
    is off by ~1e-5 Ha/Bohr here, far above the difference quotient's error."""
    pos = WATER + np.random.default_rng(1).normal(scale=0.05, size=WATER.shape)
    r = run_correlated([8, 1, 1], pos, method, "sto-3g")
    for atom, axis in [(0, 2), (1, 1), (2, 0)]:
        assert abs(r["gradient"][atom, axis] - _central_difference(method, pos, atom, axis)) < 2e-7
    e_only = run_correlated([8, 1, 1], pos, method, "sto-3g", gradient=False)
    assert np.isnan(e_only["gradient"]).all() and float(e_only["e_tot"]) == pytest.approx(float(r["e_tot"]), abs=1e-9)
    if method == "ccsd(t)":   # the pitfall the (T)-lambda step avoids is real at this geometry
        from pyscf import cc, grad, scf  # noqa: F401

        from ase_wavecalc.integrals import make_mol
        mf = scf.RHF(make_mol([8, 1, 1], pos, "sto-3g")).run(conv_tol=1e-12, verbose=0)
        mycc = cc.CCSD(mf).run(conv_tol=1e-10, verbose=0)
        mycc.ccsd_t()
        naive = mycc.nuc_grad_method().kernel()   # CCSD lambda: not dE(CCSD(T))/dR
        assert np.abs(naive - r["gradient"]).max() > 1e-6


def test_correlated_labels_refuse_open_shells_and_unknown_methods():
    with pytest.raises(ValueError, match="closed shell"):
        run_correlated([8, 1], WATER[:2], "ccsd(t)", "sto-3g")
    with pytest.raises(ValueError, match="not a correlated method"):
        run_correlated([8, 1, 1], WATER, "ccsdt", "sto-3g")


def _imported_water(tmp_path, n=4):
    from pathlib import Path
    part = Path(__file__).resolve().parents[1] / "data" / "water_pbe_def2svp" / "part-000.npz"
    db = tmp_path / "water.db"
    from ase_wavecalc.npz_import import import_npz

    import_npz(db, [part], max_frames=n, progress=False)
    return db, part


def _label_npz(path, part, frames, energies, method="CCSD(T)", basis="cc-pVTZ", shift=0.0):
    with np.load(part) as d:
        positions = d["positions"][frames] + shift
        numbers = d["numbers"]
    np.savez(path, numbers=numbers, positions=positions, e_tot=np.asarray(energies, dtype=float),
             gradient=np.full((len(frames), 3, 3), np.nan), source_part=np.array([part.name] * len(frames)),
             source_frame=np.asarray(frames), source_set=part.parent.name, method=method, basis=basis,
             frozen_core=False, reference="RHF", forces="none", pyscf_version="2.14.0")
    return path


def test_label_parts_land_on_the_frames_they_name(tmp_path):
    """Labels name their frame by source part and index (in any order); only labeled frames are read with
    them; another level, other positions or an unknown frame are refused with the reason."""
    db, part = _imported_water(tmp_path)
    frames = [3, 0, 2]   # frame 1 stays unlabeled
    npz = _label_npz(tmp_path / "labels.npz", part, frames, [-76.3, -76.0, -76.2])
    s = import_label_npz(db, [npz], progress=False)
    assert s["written"] == 3 and import_label_npz(db, [npz], progress=False)["skipped"] == 3
    d = dataset.read_dataset(db, keys=["e_tot", "high_e_tot", "high_gradient"])
    with np.load(part) as p:
        for k, frame in enumerate(d["frame"]):
            src = frames.index(int(frame))   # imported frames 0..3 are the part's first four
            assert np.allclose(d["positions_bohr"][k] * dataset.BOHR, p["positions"][frame], atol=1e-8)
            assert d["high_e_tot"][k] == [-76.3, -76.0, -76.2][src]
            assert d["e_tot"][k] == p["e_tot"][frame]
    assert sorted(d["frame"].tolist()) == [0, 2, 3] and np.isnan(d["high_gradient"]).all()
    assert len(dataset.read_dataset(db, keys=["e_tot"])["frame"]) == 4
    assert dataset.metadata(db)["high_level"]["method"] == "CCSD(T)"

    with pytest.raises(dataset.DatasetError, match="basis"):
        import_label_npz(db, [_label_npz(tmp_path / "b.npz", part, [1], [-76.1], basis="cc-pVDZ")], progress=False)
    with pytest.raises(dataset.DatasetError, match="other positions"):
        import_label_npz(db, [_label_npz(tmp_path / "p.npz", part, [1], [-76.1], shift=1e-3)], progress=False)
    with pytest.raises(dataset.DatasetError, match="not in"):
        import_label_npz(db, [_label_npz(tmp_path / "u.npz", part, [7], [-76.1])], progress=False)


@pytest.fixture(scope="module")
def labeled_water(water_db, tmp_path_factory):
    """The trainer's tiny water set (RHF/STO-3G) with MP2/STO-3G energies and forces on 20 of its frames,
    computed by the `wavecalc generate --method mp2` code path."""
    from pyscf import lib

    path = tmp_path_factory.mktemp("labels") / "water_mp2.db"
    shutil.copy(water_db, path)
    frames = sorted(dataset.read_dataset(path, keys=())["frame"].tolist())[:20]
    with lib.with_omp_threads(1):
        s = label_frames(path, "mp2", "sto-3g", frames=set(frames), progress=False, log=quiet)
    assert s["computed"] == 20 and not s["failed"]
    with lib.with_omp_threads(1):   # a re-run finds nothing left to do
        assert label_frames(path, "mp2", "sto-3g", progress=False, log=quiet, max_frames=0)["computed"] == 0
    return path


def _train_base(tmp_path, db, model: str, epochs: int = 2, out: str = "base"):
    """A tiny readout model trained on the low-level energies and forces of ``db``, in tmp_path/out."""
    from ase_wavecalc.cli import main

    cfg = write_tiny_config(tmp_path / f"{out}.toml", db, model=model, loss="energy = 100.0\nforces = 100.0",
                            optimizer="lr = 5e-3\nema_decay = 0.0", max_epochs=epochs)
    assert main(["train", str(cfg), "--out", str(tmp_path / out)]) == 0


def _finetune_config(path, db, base, train: int, val: int, rest: str):
    """A finetune config on the high-level labels of ``db``, tested on ``base``'s test frames; ``rest``: the
    tables after [data]."""
    path.write_text(f"""[data]
seed = 1
[[data.datasets]]
path = "{db}"
labels = "high"
train = {train}
val = {val}
test_frames_from = "{base}"
""" + rest)


def _energies(model, table, rows):
    batch = table.batch(rows, dtype=torch.float64)
    with torch.no_grad():
        return model.double()(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)["energy"]


def test_finetune_learns_the_high_level_and_keeps_the_hamiltonian(labeled_water, tmp_path):
    """`wavecalc finetune`: from a tiny readout model trained on RHF energies, a run on MP2 labels lowers the
    MP2 energy and force error on test frames that neither stage trained on; F is unchanged; the split and
    the card record both levels."""
    from ase_wavecalc.cli import main
    from ase_wavecalc.train.cli_export import load_run_model
    from ase_wavecalc.train.data import load_table

    _train_base(tmp_path, labeled_water, 'energy_path = "readout"\nreadout_hidden = 16\nenergy_layers = 1\n'
                'energy_channels = 8', epochs=3)
    _finetune_config(tmp_path / "ft.toml", labeled_water, tmp_path / "base", train=14, val=2, rest="""[loss]
energy = 100.0
forces = 100.0
[optimizer]
lr = 3e-3
ema_decay = 0.0
[run]
batch_size = 4
max_epochs = 12
progress = false
threads = 1
""")
    assert main(["finetune", str(tmp_path / "base"), str(tmp_path / "ft.toml"), "--out", str(tmp_path / "ft")]) == 0
    split = json.loads((tmp_path / "ft" / "split.json").read_text())["datasets"][0]
    base_split = json.loads((tmp_path / "base" / "split.json").read_text())["datasets"][0]
    assert split["test"] and set(split["test"]) <= set(base_split["test"])
    assert not set(split["train"] + split["val"]) & set(base_split["test"])

    base, _ = load_run_model(tmp_path / "base", "best")   # what init_weights takes from a run directory
    tuned, _ = load_run_model(tmp_path / "ft", "last")
    table = load_table(labeled_water, keys=("e_tot", "gradient"), labels="high", sha256=False)
    rows = table.rows_of_frames(split["test"])
    high = table.extra["e_tot"][rows]
    err = {name: _energies(m, table, rows) - high for name, m in (("base", base), ("tuned", tuned))}
    # the base model's error to MP2 minus its mean (e0 is refitted first) vs the tuned model's
    base_mae = float((err["base"] - err["base"].mean()).abs().mean())
    assert float(err["tuned"].abs().mean()) < 0.5 * base_mae
    batch = table.batch(rows[:2], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(tuned(batch.numbers, batch.positions_bohr, batch.batch)["fock"],
                                   base(batch.numbers, batch.positions_bohr, batch.batch)["fock"],
                                   rtol=0, atol=1e-12)

    out = tmp_path / "models" / "water-mp2-tiny"
    assert main(["export", str(tmp_path / "ft"), str(out), "--test"]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["energy_level_of_theory"]["method"] == "MP2"
    assert card["level_of_theory"]["method"] == "rhf"
    assert np.isfinite(card["test_metrics"]["energy_mae_mev"])


def test_finetune_refuses_configs_without_high_level_labels(water_db, tmp_path):
    from ase_wavecalc.cli import main

    cfg = write_tiny_config(tmp_path / "c.toml", water_db, model='energy_path = "readout"', loss="energy = 1.0")
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.json").write_text("{}")
    assert main(["finetune", str(tmp_path / "base"), str(cfg), "--out", str(tmp_path / "r")]) == 2


def test_linear_transfer_head_fits_in_closed_form_and_its_forces_are_exact(labeled_water, tmp_path):
    """trainable = "transfer_head": the ridge fit before the first step lowers the validation error to the
    high level; the head is smooth in the geometry, its forces are the exact gradient (central differences),
    and a rotated molecule gets the same energy."""
    from ase_wavecalc.cli import main
    from ase_wavecalc.model import build_model, default_config
    from ase_wavecalc.train.cli_export import load_run_model

    with pytest.raises(ValueError, match="transfer_head"):   # it needs the readout path with standardization
        build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1, transfer_head=True))
    _train_base(tmp_path, labeled_water, 'energy_path = "readout"\nreadout_hidden = 16\nreadout_standardize = true'
                '\ncommittee_size = 2')
    _finetune_config(tmp_path / "tr.toml", labeled_water, tmp_path / "base", train=12, val=4, rest="""[model]
transfer_head = true
[loss]
energy = 1.0
[run]
precision = "float64"
max_epochs = 0
progress = false
threads = 1
trainable = "transfer_head"
""")
    assert main(["finetune", str(tmp_path / "base"), str(tmp_path / "tr.toml"), "--out", str(tmp_path / "tr")]) == 0
    fit = json.loads((tmp_path / "tr" / "transfer_fit.json").read_text())
    assert fit["val_mae_mev"] < fit["val_mae_mev_before"]
    tuned, _ = load_run_model(tmp_path / "tr", "last")
    tuned = tuned.double()
    assert float(tuned.transfer_weight.detach().abs().sum()) > 0
    # the base's committee spread over the low level's energies: the transfer model does not carry it
    assert getattr(tuned, "committee_mlps", None) is None and "energy_committee" not in tuned(
        torch.tensor([8, 1, 1]), torch.as_tensor(WATER), torch.zeros(3, dtype=torch.long), energy_only=True)

    z = torch.tensor([8, 1, 1])
    pos = torch.as_tensor(WATER + np.random.default_rng(2).normal(scale=0.05, size=WATER.shape)).requires_grad_(True)
    batch = torch.zeros(3, dtype=torch.long)
    out = tuned(z, pos, batch, energy_only=True)
    assert float(out["transfer_correction"].detach().abs().sum()) > 0
    (grad,) = torch.autograd.grad(out["energy"].sum(), pos)
    step = 1e-4
    for atom, axis in [(0, 2), (1, 0), (2, 1)]:
        e = []
        for sign in (1, -1):
            p = pos.detach().clone()
            p[atom, axis] += sign * step
            with torch.no_grad():
                e.append(float(tuned(z, p, batch, energy_only=True)["energy"]))
        assert abs(float(grad[atom, axis]) - (e[0] - e[1]) / (2 * step)) < 1e-7
    rot = torch.as_tensor(np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0])
    with torch.no_grad():
        assert float(tuned(z, pos.detach() @ rot.T, batch, energy_only=True)["energy"]) == pytest.approx(
            float(out["energy"]), abs=1e-9)


def _assert_same_record(a, b, path="committee"):
    """Two JSON records equal, their floats to rounding (they are results of fits, not copies)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _assert_same_record(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_record(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), path
    else:
        assert a == b, path


def test_committee_adds_an_uncertainty_without_changing_the_model(labeled_water, tmp_path):
    """`wavecalc committee`: the model's energy and forces are unchanged; energy_std comes with every energy
    and forces_std on request (the spread of the members' own forces); passing the card's threshold warns
    once and is counted. (Whether the spread tracks the error is measured on the shipped models:
    benchmarks/uncertainty.py.)"""
    import warnings

    from ase import Atoms

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.cli import main
    from ase_wavecalc.units import BOHR

    _train_base(tmp_path, labeled_water, 'energy_path = "readout"\nreadout_hidden = 16\nreadout_standardize = true',
                out="run")
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "plain"), "--refit-frames", "0"]) == 0
    assert main(["committee", str(tmp_path / "plain"), str(labeled_water), "--out", str(tmp_path / "comm"),
                 "--size", "4"]) == 0
    card = json.loads((tmp_path / "comm" / "model.json").read_text())
    assert card["committee"]["size"] == 4 and card["committee"]["energy_std_warning_mev"] > 0
    # refitting the committee of a model that has one (a model trained on from a committee model) is allowed
    # and changes only the committee: every member starts afresh from the readout
    for seed, name in ((0, "again"), (1, "reseeded")):
        assert main(["committee", str(tmp_path / "comm"), str(labeled_water), "--out", str(tmp_path / name),
                     "--size", "4", "--seed", str(seed)]) == 0
    _assert_same_record(json.loads((tmp_path / "again" / "model.json").read_text())["committee"], card["committee"])
    reseeded = json.loads((tmp_path / "reseeded" / "model.json").read_text())["committee"]
    assert reseeded["seed"] == 1 and reseeded["member_val_energy_mae_mev"] != card["committee"]["member_val_energy_mae_mev"]
    assert main(["committee", str(tmp_path / "comm"), str(labeled_water), "--out", str(tmp_path / "smaller"),
                 "--size", "2"]) == 0   # a refit may change the size
    assert json.loads((tmp_path / "smaller" / "model.json").read_text())["committee"]["size"] == 2

    atoms = Atoms("OH2", positions=WATER * BOHR)
    plain, comm = atoms.copy(), atoms.copy()
    plain.calc = WaveCalculator(model=str(tmp_path / "plain"))
    comm.calc = WaveCalculator(model=str(tmp_path / "comm"))
    assert comm.get_potential_energy() == pytest.approx(plain.get_potential_energy(), rel=0, abs=1e-9)
    np.testing.assert_allclose(comm.get_forces(), plain.get_forces(), rtol=0, atol=1e-9)
    near = comm.calc.get_property("energy_std", comm)
    assert near > 0 and near == comm.calc.uncertainty["energy_std"] == comm.info["energy_std"]
    assert "energy_std" not in plain.calc.uncertainty and "energy_std" not in plain.info
    std_f = comm.calc.get_property("forces_std", comm)
    assert std_f.shape == (3, 3) and np.all(std_f >= 0) and std_f.max() > 0
    from ase.calculators.calculator import PropertyNotImplementedError
    with pytest.raises(PropertyNotImplementedError, match="committee"):
        plain.calc.get_property("forces_std", plain)

    far = comm.copy()
    far.positions[1] += [0.0, 0.25, 0.1]     # an O-H bond stretched well past the training frames
    far.calc = WaveCalculator(model=str(tmp_path / "comm"))
    far_std = far.calc.get_property("energy_std", far)
    assert far_std != near
    # the policy: above the card's threshold (set here between the two spreads) it warns once and counts
    low, high = (comm, far) if near < far_std else (far, comm)
    calc = WaveCalculator(model=str(tmp_path / "comm"))
    test = low.copy()
    test.calc = calc
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        test.get_potential_energy()
        calc.provider.card["committee"]["energy_std_warning_mev"] = 1e3 * 0.5 * (near + far_std)
        test.positions[0, 0] += 1e-6
        test.get_potential_energy()
        assert not caught and getattr(calc.provider, "n_uncertain", 0) == 0
        test.positions[:] = high.positions
        test.get_potential_energy()
    assert any("committee energy spread" in str(w.message) for w in caught) and calc.provider.n_uncertain == 1
