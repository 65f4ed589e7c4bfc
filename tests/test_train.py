"""Training machinery, one run at a time: config, split, losses and metrics; training, resume; parameter
groups and warmup; export/load, evaluate; energy-offset refits. Stopping (time limit, SIGTERM, SIGKILL) is in
test_train_interrupts.py.

The data are 24 water geometries with RHF/STO-3G references (PySCF, ~2 s), written to a dataset file
in a temporary directory (the session fixture ``water_db`` in conftest.py). Most tests use a small stand-in
network (distances -> symmetric matrix, in _train_helpers.py) so that they test the trainer, not the
architecture; the export/load round trip uses the real model. Multi-stage training is in
test_train_stages.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_helpers import BASIS, N_FRAMES, StandIn, build_stand_in, make_config, quiet, write_tiny_config

from ase_wavecalc.train.checkpoint import load_checkpoint
from ase_wavecalc.train.config import ConfigError, parse_config
from ase_wavecalc.train.data import load_table, split_frames
from ase_wavecalc.train.metrics import evaluate_model, orbital_errors
from ase_wavecalc.train.trainer import Trainer


# ----------------------------------------------------------------------------------------------------
# config, data, losses, metrics

def test_config_flags_misspelled_keys(water_db):
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        parse_config({"data": {"datasets": [{"path": "x.db", "train": 1}]}, "run": {"batchsize": 4}})
    with pytest.raises(ConfigError, match="unknown loss term"):
        parse_config({"data": {"datasets": [{"path": "x.db", "train": 1}]}, "loss": {"fock_msa": 1.0}})
    with pytest.raises(ConfigError, match="precision"):
        parse_config({"data": {"datasets": [{"path": "x.db", "train": 1}]}, "run": {"precision": "half"}})


def test_split_is_disjoint_and_reproducible():
    ids = np.arange(50) * 3
    a = split_frames(ids, 30, 10, 5, seed=1)
    b = split_frames(ids[::-1], 30, 10, 5, seed=1)
    assert a == b
    assert not set(a["train"]) & set(a["val"]) and not set(a["train"]) & set(a["test"])
    assert not set(a["val"]) & set(a["test"])
    assert split_frames(ids, 35, 10, 5, seed=1)["test"] == a["test"]  # more training data, same test set
    with pytest.raises(ValueError, match="needs 56 frames"):
        split_frames(ids, 41, 10, 5, seed=1)


def test_orbital_metrics_are_invariant(water_db):
    table = load_table(water_db, sha256=False)
    f, s, n = table.fock[:3], table.overlap[:3], table.n_occ
    same = orbital_errors(f, f, s, n)
    assert torch.allclose(same["orbital_cosine"], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(same["occupied_subspace"], torch.ones(3, dtype=torch.float64))
    assert float(same["dm_mae"].max()) < 1e-12
    # F + c S has the same orbitals (any signs) and eigenvalues shifted by c
    shifted = orbital_errors(f + 0.01 * s, f, s, n)
    assert torch.allclose(shifted["orbital_cosine"], torch.ones(3, dtype=torch.float64), atol=1e-10)
    assert float(shifted["dm_rel_fro"].max()) < 1e-10
    assert torch.allclose(shifted["eps_occ_mae"], torch.full((3,), 0.01, dtype=torch.float64))
    assert torch.allclose(shifted["gap_mae"], torch.zeros(3, dtype=torch.float64), atol=1e-12)


def test_energy_and_forces_terms_plug_in(water_db):
    from ase_wavecalc.train.losses import WeightedLoss

    table = load_table(water_db, keys=("e_tot", "gradient"), sha256=False)
    batch = table.batch([0, 1], dtype=torch.float64)
    loss = WeightedLoss({"fock_mae": 1.0, "energy": 1.0, "forces": 1.0})
    assert loss.needs_positions_grad and set(loss.dataset_keys) == {"e_tot", "gradient", "hcore"}
    batch.positions_bohr.requires_grad_(True)
    fock = batch.fock.clone().requires_grad_(True)
    total, parts = loss({"fock": fock}, batch)
    # for HF, E_nn + 1/2 Tr[P (F + h)] with the reference F is the reference energy
    assert parts["energy"] < 1e-14 and parts["fock_mae"] == 0.0
    total.backward()
    assert torch.isfinite(fock.grad).all() and fock.grad.abs().max() > 0
    # ... so the per-element offsets fitted to the reference energies vanish for HF
    from ase_wavecalc.train.setup import reference_atom_energies
    table = load_table(water_db, keys=("e_tot", "hcore"), sha256=False)
    e0 = reference_atom_energies([table], [np.arange(table.n_frames)], [1, 8])
    assert float(e0.abs().max()) < 1e-7


def test_orthonormal_fock_loss_bounds_every_orbital_energy(water_db):
    """fock_orth_mse is zero at the reference, and by Hoffman-Wielandt its sum over elements bounds the
    summed squared errors of all sorted eigenvalues of F C = S C eps, occupied and virtual."""
    from ase_wavecalc.electronic import solve_fock
    from ase_wavecalc.train.losses import WeightedLoss, orthonormalizer

    table = load_table(water_db, sha256=False)
    batch = table.batch([0, 1, 2], dtype=torch.float64)
    loss = WeightedLoss({"fock_orth_mse": 1.0})
    assert loss({"fock": batch.fock.clone()}, batch)[1]["fock_orth_mse"] == 0.0
    x = orthonormalizer(batch.overlap)
    eye = torch.eye(table.nao, dtype=torch.float64).expand_as(x)
    assert torch.allclose(x.transpose(-1, -2) @ batch.overlap @ x, eye, atol=1e-10)
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-4, 1e-2):
        noise = scale * torch.randn(batch.fock.shape, generator=gen, dtype=torch.float64)
        fock = batch.fock + noise + noise.transpose(-1, -2)
        _, parts = loss({"fock": fock}, batch)
        eps_pred, _ = solve_fock(fock, batch.overlap)
        eps_ref, _ = solve_fock(batch.fock, batch.overlap)
        bound = parts["fock_orth_mse"] * 3 * table.nao ** 2          # sum over elements and structures
        assert 0 < float((eps_pred - eps_ref).square().sum()) <= bound


# ----------------------------------------------------------------------------------------------------
# training

def test_training_reduces_validation_error(water_db, tmp_path):
    run_dir = tmp_path / "run"
    result = Trainer(make_config(water_db, max_epochs=25), run_dir, build_model=build_stand_in,
                     log=quiet).fit()
    assert result.stopped == "max_epochs" and result.epochs == 25 and result.steps == 100
    for name in ("config.toml", "split.json", "checkpoint.pt", "best.pt", "metrics.csv", "learning_curve.png",
                 "train.log"):
        assert (run_dir / name).is_file(), name
    rows = np.genfromtxt(run_dir / "metrics.csv", delimiter=",", names=True)
    assert len(rows) == 25
    assert rows["val_fock_mae_uha"][-1] < 0.3 * rows["val_fock_mae_uha"][0]
    assert rows["val_eps_mae_uha"][-1] < rows["val_eps_mae_uha"][0]
    split = json.loads((run_dir / "split.json").read_text())
    d = split["datasets"][0]
    assert len(d["train"]) == 16 and len(d["val"]) == 4 and len(d["test"]) == 4
    assert set(d["test"]) <= set(range(100, 100 + 2 * N_FRAMES, 2))
    assert not set(d["test"]) & set(d["train"])
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")   # weights_only=True
    assert ckpt["progress"]["epoch"] == 25
    # a second stage starts from this run's best EMA weights
    stage2 = make_config(water_db, max_epochs=1, init_weights=str(run_dir))
    Trainer(stage2, tmp_path / "stage2", build_model=build_stand_in, log=quiet).fit()
    first = np.genfromtxt(tmp_path / "stage2" / "metrics.csv", delimiter=",", names=True)
    assert float(first["val_fock_mae_uha"]) < 0.5 * rows["val_fock_mae_uha"][0]


def test_frames_labelled_during_a_run_join_its_training_split(water_db, tmp_path):
    """run.grow_train_every_min: a run beside a labeller (as in `wavecalc fit`) trains on the frames written
    to its dataset file after the split was made; validation and test keep their frames, and a resumed run
    trains on the grown split."""
    import shutil

    from ase_wavecalc import dataset
    from ase_wavecalc.units import BOHR

    db_path = tmp_path / "growing.db"
    shutil.copyfile(water_db, db_path)
    db = dataset.connect(db_path)
    later = [row for row in db.select(include_data=True) if row.frame >= 100 + 2 * 16]   # the last 8 frames
    db.delete([row.id for row in later])
    table = {"run": {"max_epochs": 1, "grow_train_every_min": 1e-9}}
    cfg = make_config(db_path, **table["run"])
    cfg.data.datasets[0].train = 8                                   # 8 train, 4 val, 4 test of 16 frames
    run = tmp_path / "run"
    r1 = Trainer(cfg, run, build_model=build_stand_in, log=quiet).fit()
    assert r1.steps == 2                                             # 8 frames, batches of 4
    before = json.loads((run / "split.json").read_text())["datasets"][0]
    with db:                                                         # the labeller stores 8 more frames
        for row in later:
            dataset.write_frame(db, row.frame, row.numbers, row.positions / BOHR, dict(row.data))
    cfg = make_config(db_path, max_epochs=3, grow_train_every_min=1e-9)
    cfg.data.datasets[0].train = 8
    lines = []
    r2 = Trainer(cfg, run, resume=True, build_model=build_stand_in, log=lines.append).fit()
    after = json.loads((run / "split.json").read_text())["datasets"][0]
    assert after["val"] == before["val"] and after["test"] == before["test"]
    assert sorted(set(after["train"]) - set(before["train"])) == [row.frame for row in later]
    assert r2.steps == 2 + 2 + 4        # epoch 2 on the old split; it grew at its end; epoch 3 on 16 frames
    assert any("8 frames labelled since the split" in line for line in lines)


def test_cosine_schedule_follows_the_runs_training_time(water_db, tmp_path):
    """scheduler.kind = "cosine": lr = base (1 + cos(pi t / horizon)) / 2, t the run's training wall time over
    all its invocations (progress["train_time_s"] at the start of this one plus what it has run), never below
    min_lr; settings it cannot use are refused."""
    from ase_wavecalc.train.config import SchedulerConfig
    from ase_wavecalc.train.stages import set_scheduled_lrs

    cfg = make_config(water_db, max_epochs=1)
    cfg.scheduler = SchedulerConfig(kind="cosine", horizon_min=10.0, min_lr=1e-5)
    trainer = Trainer(cfg, tmp_path / "run", build_model=build_stand_in, log=quiet)
    trainer.fit()
    for earlier_s, expected in ((0.0, 1e-2), (150.0, 1e-2 * (1 + 2 ** -0.5) / 2), (300.0, 5e-3), (600.0, 1e-5),
                                (900.0, 1e-5)):
        set_scheduled_lrs(trainer.optimizer, 10 ** 6, 0, cfg.scheduler, earlier_s)
        assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-4), earlier_s
    for bad, match in ((dict(kind="cosine"), "horizon_min"), (dict(kind="linear", horizon_min=1.0), "kind")):
        with pytest.raises(ConfigError, match=match):
            SchedulerConfig(**bad)


def test_a_run_on_its_plateau_stops_when_asked_and_only_then(water_db, tmp_path):
    """run.stop_on_plateau: once the plateau scheduler's lr sits at min_lr and a further patience of epochs
    brought no better validation loss, the run stops ("converged"), and a resumed run stays stopped; without
    the setting it trains to max_epochs. A learning rate of 1e-6 keeps the validation loss where it starts."""
    from ase_wavecalc.train.config import SchedulerConfig

    results, logs = {}, {}
    for stop in (True, False):
        cfg = make_config(water_db, max_epochs=20, stop_on_plateau=stop)
        cfg.optimizer.lr = 1e-6
        cfg.scheduler = SchedulerConfig(kind="plateau", patience=2, factor=0.5, min_lr=5e-7)
        logs[stop] = []
        results[stop] = Trainer(cfg, tmp_path / f"run{stop}", build_model=build_stand_in, log=logs[stop].append).fit()
    # epoch 1 best; 2-4 bad: lr halved to the floor after epoch 4; 5-7 bad at the floor: stop after epoch 7
    assert results[True].stopped == "converged" and results[True].epochs == 7
    assert any("run.stop_on_plateau" in line for line in logs[True])
    assert not any("run.stop_on_plateau" in line for line in logs[False])
    assert results[False].stopped == "max_epochs" and results[False].epochs == 20
    cfg = make_config(water_db, max_epochs=20, stop_on_plateau=True)
    cfg.optimizer.lr = 1e-6
    cfg.scheduler = SchedulerConfig(kind="plateau", patience=2, factor=0.5, min_lr=5e-7)
    again = Trainer(cfg, tmp_path / "runTrue", resume=True, build_model=build_stand_in, log=quiet).fit()
    assert again.stopped == "converged" and again.epochs == 7


def _flat_state(ckpt):
    out = {}

    def walk(prefix, v):
        if isinstance(v, torch.Tensor):
            out[prefix] = v
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}", x)
        elif isinstance(v, (list, tuple)):
            for k, x in enumerate(v):
                walk(f"{prefix}.{k}", x)
        else:
            out[prefix] = v
    walk("", {k: ckpt[k] for k in ("model", "ema", "optimizer", "scheduler", "rng")})
    return out


def test_resume_continues_the_same_run(water_db, tmp_path):
    # 4 steps per epoch; 14 steps straight vs 6 (stops mid epoch 2) + resume + 8, crossing validations
    # and learning-rate reductions (patience 0, threshold 0.9), in float64
    kw = dict(precision="float64")
    straight = tmp_path / "straight"
    cfg = make_config(water_db, max_steps=14, **kw)
    cfg.scheduler.patience, cfg.scheduler.threshold = 0, 0.9
    Trainer(cfg, straight, build_model=build_stand_in, log=quiet).fit()
    split = tmp_path / "split"
    cfg = make_config(water_db, max_steps=6, **kw)
    cfg.scheduler.patience, cfg.scheduler.threshold = 0, 0.9
    r1 = Trainer(cfg, split, build_model=build_stand_in, log=quiet).fit()
    assert r1.stopped == "max_steps" and r1.steps == 6
    cfg = make_config(water_db, max_steps=14, **kw)
    cfg.scheduler.patience, cfg.scheduler.threshold = 0, 0.9
    r2 = Trainer(cfg, split, resume=True, build_model=build_stand_in, log=quiet).fit()
    assert r2.steps == 14
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(split / "checkpoint.pt")
    fa, fb = _flat_state(a), _flat_state(b)
    assert fa.keys() == fb.keys()
    for k in fa:   # the same run, to rounding: not bit patterns, which another CPU's sums may change
        if isinstance(fa[k], torch.Tensor):
            torch.testing.assert_close(fa[k], fb[k], rtol=1e-10, atol=1e-12, msg=k)
        elif isinstance(fa[k], float):
            assert fa[k] == pytest.approx(fb[k], rel=1e-10, abs=1e-12), k
        else:
            assert fa[k] == fb[k], k
    lrs = [g["lr"] for g in a["optimizer"]["param_groups"]]
    assert lrs[0] < 1e-2  # the scheduler acted, and identically
    # metrics rows: one per completed epoch, the same in both runs
    rows_a = (straight / "metrics.csv").read_text().splitlines()
    rows_b = (split / "metrics.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 1 + 3
    # a changed config is refused on resume
    cfg = make_config(water_db, max_steps=20, **kw)
    cfg.scheduler.patience, cfg.scheduler.threshold = 0, 0.9
    cfg.optimizer.lr = 5e-2
    with pytest.raises(RuntimeError, match="optimizer.lr"):
        Trainer(cfg, split, resume=True, build_model=build_stand_in, log=quiet).fit()


def test_parameter_groups_and_warmup(water_db, tmp_path):
    """optimizer.lr_by_prefix gives the named parameters their own lr (a typo is an error, not a silent
    fallback); warmup_steps ramps every group's lr linearly from base/warmup to base."""
    from ase_wavecalc.model.network import build_model, default_config
    from ase_wavecalc.train.stages import TrainingError, parameter_groups

    model = build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1,
                                       energy_path="readout", readout_hidden=4))
    groups = parameter_groups(model, 1e-5, {"readout_mlp.": 1e-3})
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert all(p is q for p, q in zip(groups[1]["params"], model.readout_mlp.parameters()))
    with pytest.raises(TrainingError, match="readout_mpl"):
        parameter_groups(model, 1e-5, {"readout_mpl.": 1e-3})

    cfg = write_tiny_config(tmp_path / "w.toml", water_db, model='energy_path = "readout"\nreadout_hidden = 8',
                            loss="fock_mae = 1.0\nenergy = 1.0",
                            optimizer='lr = 1e-4\nema_decay = 0.0\nwarmup_steps = 4\n'
                                      'lr_by_prefix = { "readout_mlp." = 1e-2 }', max_epochs=1)
    from ase_wavecalc.train.config import load_config

    trainer = Trainer(load_config(cfg), tmp_path / "run", log=quiet)
    trainer.run_dir.mkdir(parents=True)
    trainer._load_data()
    trainer._build(None)
    seen = []
    for step in range(6):
        batch = trainer.tables[0].batch(np.arange(2), dtype=trainer.dtype, table=0)
        trainer.train_step(batch)
        seen.append([g["lr"] for g in trainer.optimizer.param_groups])
        trainer.progress["step"] += 1
    assert np.allclose(seen[0], [0.25e-4, 0.25e-2]) and np.allclose(seen[1], [0.5e-4, 0.5e-2])
    assert np.allclose(seen[3], [1e-4, 1e-2]) and np.allclose(seen[5], [1e-4, 1e-2])


def test_evaluate_model_keys(water_db):
    table = load_table(water_db, sha256=False)
    torch.manual_seed(0)
    model = StandIn({"nao": 7, "n_atoms": 3}).double()
    result = evaluate_model(model, [table], [np.arange(5)], batch_size=2)
    for key in ("fock_mae_uha", "fock_diag_mae_uha", "fock_offdiag_mae_uha", "fock_max_abs_uha",
                "eps_occ_mae_uha", "homo_mae_uha", "lumo_mae_uha", "gap_mae_uha", "orbital_cosine",
                "occupied_subspace", "dm_mae", "dm_rel_fro"):
        assert np.isfinite(result[key]), key
    assert result["n_structures"] == 5
    assert 0.0 <= result["orbital_cosine"] <= 1.0 + 1e-12


def test_train_export_load_evaluate_with_real_model(water_db, tmp_path):
    from ase_wavecalc.cli import main
    from ase_wavecalc.model.io import load_model

    toml = write_tiny_config(tmp_path / "tiny.toml", water_db, max_epochs=3)
    run_dir, out = tmp_path / "run", tmp_path / "models" / "tiny_water"
    assert main(["train", str(toml), "--out", str(run_dir)]) == 0
    # the saved best weights reproduce the validation error logged for their epoch
    from ase_wavecalc.train.cli_export import load_run_model, run_split_tables
    model, info = load_run_model(run_dir, "best")
    tables, rows, _ = run_split_tables(run_dir, "val")
    logged = np.genfromtxt(run_dir / "metrics.csv", delimiter=",", names=True)
    logged = logged[logged["epoch"] == info["epoch"]]["val_fock_mae_uha"][0]
    again = evaluate_model(model, tables, rows, orbitals=False)["fock_mae_uha"]
    assert again == pytest.approx(logged, rel=1e-6)
    assert main(["export", str(run_dir), str(out), "--test"]) == 0
    model, card = load_model(str(out))
    assert (out / "train_config.toml").read_text() == toml.read_text()
    assert card["basis"] == BASIS and card["elements"] == [1, 8]
    assert len(card["split"]["datasets"][0]["test_frames"]) == 4
    assert card["datasets"][0]["sha256"] and card["test_metrics"]["n_structures"] == 4
    js = tmp_path / "eval.json"
    assert main(["evaluate", str(out), str(water_db), "--json", str(js)]) == 0
    metrics = json.loads(js.read_text())
    assert metrics["n_structures"] == 4
    # the exported model reproduces the card's test metric, and both equal |F_pred - F_ref| computed here
    assert metrics["fock_mae_uha"] == pytest.approx(card["test_metrics"]["fock_mae_uha"], rel=1e-6)
    test_frames = card["split"]["datasets"][0]["test_frames"]
    table = load_table(water_db, sha256=False)
    batch = table.batch(table.rows_of_frames(test_frames), dtype=torch.float64)
    with torch.no_grad():
        pred = model.double()(batch.numbers, batch.positions_bohr, batch.batch)["fock"]
    direct = float((pred - batch.fock).abs().mean()) * 1e6
    assert metrics["fock_mae_uha"] == pytest.approx(direct, rel=1e-4)
    # the card records the training molecule; evaluating on another one warns (a card claiming H2O2 here)
    assert card["training_domain"]["compositions"] == ["H2O"]
    claimed = json.loads((out / "model.json").read_text())
    claimed["training_domain"]["compositions"] = ["H2O2"]
    (out / "model.json").write_text(json.dumps(claimed))
    with pytest.warns(UserWarning, match="holds H2O, but model .* was trained on H2O2 only"):
        assert main(["evaluate", str(out), str(water_db)]) == 0


def test_export_reports_test_metrics_per_dataset(water_db, tmp_path):
    """Several datasets: the first one's test metrics are the card's headline, the others beside them
    (not pooled in), and a dataset without test frames is left out."""
    import shutil

    from ase_wavecalc.cli import main
    from ase_wavecalc.model.io import load_model

    extra, train_only = tmp_path / "water_extra.db", tmp_path / "water_edges.db"
    shutil.copyfile(water_db, extra)
    shutil.copyfile(water_db, train_only)
    toml = write_tiny_config(tmp_path / "multi.toml", water_db, max_epochs=1)
    text = toml.read_text().replace("\n[model]", f"""
[[data.datasets]]
path = "{extra}"
train = 8
val = 2
test = 3

[[data.datasets]]
path = "{train_only}"
train = 8
val = 2
test = 0

[model]""", 1)
    toml.write_text(text)
    run_dir, out = tmp_path / "run", tmp_path / "models" / "multi"
    assert main(["train", str(toml), "--out", str(run_dir)]) == 0
    assert main(["export", str(run_dir), str(out), "--test"]) == 0
    _, card = load_model(str(out))
    by = card["test_metrics_by_dataset"]
    assert sorted(by) == sorted([water_db.name, extra.name])
    assert by[water_db.name]["n_structures"] == 4 and by[extra.name]["n_structures"] == 3
    assert card["test_metrics"] == by[water_db.name]


# ----------------------------------------------------------------------------------------------------
# energy offsets

def test_energy_offset_refit_removes_mean_residual_and_keeps_forces(water_db):
    """The least-squares offset refit shifts every energy by one constant and leaves forces alone."""
    from ase_wavecalc.model.network import build_model, default_config
    from ase_wavecalc.providers import ModelProvider
    from ase_wavecalc.train.offsets import refit_energy_offsets

    torch.manual_seed(0)
    model = build_model(default_config(basis=BASIS, elements=[1, 8], channels=4, num_layers=1,
                                       pair_channels=4, radial_hidden=8, pair_hidden=8,
                                       delta_hcore_head=True)).double()
    table = load_table(water_db, keys=("e_tot",), sha256=False)
    frames = [int(f) for f in table.frame[:6]]

    def evaluate(m):
        provider = ModelProvider(m, card={"name": "tiny"})
        res = [provider.compute(table.numbers, table.positions_bohr[i], want_gradient=True) for i in range(6)]
        return np.array([r.energy for r in res]), np.stack([r.gradient for r in res])

    e_before, g_before = evaluate(model)
    summary = refit_energy_offsets(model, [(water_db, frames)])
    e_after, g_after = evaluate(model)
    ref = table.extra["e_tot"][:6].numpy()
    assert summary["frames"] == 6 and abs(summary["residual_mean_mev_before"]) > 1.0
    assert abs((ref - e_after).mean()) < 1e-9
    shift = e_after - e_before
    assert np.ptp(shift) < 1e-9 and abs(shift[0]) > 1e-5
    np.testing.assert_allclose(g_after, g_before, atol=1e-12)


def test_offset_correction_of_one_composition_stays_in_its_span():
    """Many frames of one molecule: the shift is along the composition (no huge null-space part)."""
    from ase_wavecalc.train.offsets import offset_correction

    counts = np.tile([6.0, 2.0, 1.0], (654, 1))              # C2H6O, elements ordered H, C, O
    rng = np.random.default_rng(0)
    residuals = 0.01 + 1e-4 * rng.normal(size=654)
    delta = offset_correction(counts, residuals)
    assert np.abs(delta).max() < 0.01
    np.testing.assert_allclose(counts @ delta, residuals.mean(), rtol=1e-10)
    np.testing.assert_allclose(np.cross(delta, [6.0, 2.0, 1.0]), 0.0, atol=1e-14)


def test_offset_refit_ignores_outlier_frames():
    """A few frames with eV errors (a model just past its domain) must not shift every other energy."""
    from ase_wavecalc.train.offsets import inlier_frames, offset_correction

    rng = np.random.default_rng(1)
    counts = np.tile([6.0, 2.0, 1.0], (500, 1))
    residuals = 0.002 + 1e-3 * rng.normal(size=500)          # Hartree: 2 mHa shift, ~27 meV noise
    residuals[:10] -= 0.08                                     # 1% of frames off by ~2 eV
    residuals[10] = np.nan                                     # and one that failed
    keep = inlier_frames(counts, residuals)
    assert not keep[:11].any() and keep[11:].mean() > 0.99
    delta = offset_correction(counts[keep], residuals[keep])
    assert abs(float(counts[0] @ delta) - 0.002) < 3e-4      # the plain mean would be off by 1.6 mHa
    assert inlier_frames(counts[:3], np.zeros(3)).all()       # no spread: everything is an inlier
