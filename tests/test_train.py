"""Training machinery: end-to-end run, bit-for-bit resume, SIGTERM, export/load, evaluate, metrics.

The data are 24 water geometries with RHF/STO-3G references (PySCF, ~2 s), written to a dataset file
in a temporary directory. Most tests use a small stand-in network (distances -> symmetric matrix) so
that they test the trainer, not the architecture; the export/load round trip uses the real model.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from ase_wavecalc.train.checkpoint import load_checkpoint
from ase_wavecalc.train.config import ConfigError, parse_config
from ase_wavecalc.train.data import load_table, split_frames
from ase_wavecalc.train.metrics import evaluate_model, orbital_errors
from ase_wavecalc.train.trainer import Trainer

N_FRAMES = 24
BASIS = "sto-3g"


# ----------------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def water_db(tmp_path_factory):
    """24 distorted water molecules, RHF/STO-3G (gradient left zero), as a dataset file (frame ids 100,
    102, ...)."""
    from pyscf import lib

    from ase_wavecalc import dataset
    from ase_wavecalc.reference import reference_settings, run_reference
    from ase_wavecalc.units import BOHR

    path = tmp_path_factory.mktemp("data") / "water_hf_sto3g.db"
    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0, 0.2217], [0.0, 1.4309, -0.8867], [0.0, -1.4309, -0.8867]])  # Bohr
    numbers = [8, 1, 1]
    db = dataset.connect(path, create=True)
    dataset.update_metadata(db, reference_settings("hf", BASIS, conv_tol=1e-10))
    # one OpenMP thread: 7x7 matrices gain nothing from threads, and spinning threads on a busy machine
    # make PySCF several times slower
    with db, lib.with_omp_threads(1):
        for i in range(N_FRAMES):
            pos = base + rng.normal(scale=0.1, size=base.shape)
            ref = run_reference(numbers, pos * BOHR, method="hf", basis=BASIS, conv_tol=1e-10,
                                gradient=False)
            dataset.write_frame(db, 100 + 2 * i, numbers, pos, ref)
    return path


class StandIn(torch.nn.Module):
    """Distances -> symmetric (nao, nao) matrix: enough to exercise the trainer."""

    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        nao, n_pairs = config["nao"], config["n_atoms"] * (config["n_atoms"] - 1) // 2
        self.mean = torch.nn.Parameter(torch.zeros(nao, nao))
        self.hidden = torch.nn.Linear(n_pairs, config.get("hidden", 16))
        self.out = torch.nn.Linear(config.get("hidden", 16), nao * nao)
        self.n_atoms = config["n_atoms"]
        self.nao = nao
        self.scale = float(config.get("scale", 10.0))  # F elements reach -20 Hartree (O 1s)

    def forward(self, numbers, positions_bohr, batch):
        b = positions_bohr.shape[0] // self.n_atoms
        pos = positions_bohr.reshape(b, self.n_atoms, 3)
        i, j = torch.triu_indices(self.n_atoms, self.n_atoms, 1)
        d = (pos[:, i] - pos[:, j]).norm(dim=-1) - 2.0
        m = self.scale * (self.mean + self.out(torch.tanh(self.hidden(d))).reshape(b, self.nao, self.nao))
        return {"fock": 0.5 * (m + m.transpose(-1, -2))}


def build_stand_in(config):
    return StandIn(config)


def make_config(db, **run):
    table = {
        "data": {"seed": 3, "datasets": [{"path": str(db), "train": 16, "val": 4, "test": 4}]},
        "model": {"nao": 7, "n_atoms": 3, "hidden": 16},
        "loss": {"fock_mse": 1.0, "fock_mae": 1.0, "orbital_energy": 0.01},
        "optimizer": {"lr": 1e-2, "ema_decay": 0.9, "grad_clip": 5.0},
        "scheduler": {"patience": 2, "factor": 0.5},
        "run": {"batch_size": 4, "max_epochs": 30, "progress": False, "checkpoint_every_min": 10.0,
                "threads": 1, **run},
    }
    return parse_config(table)


def quiet(_line):
    pass


# ----------------------------------------------------------------------------------------------------
# config, data, metrics

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


def test_resume_is_bit_for_bit(water_db, tmp_path):
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
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            assert torch.equal(fa[k], fb[k]), k
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


def test_time_limit_stops_cleanly(water_db, tmp_path):
    t0 = time.monotonic()
    result = Trainer(make_config(water_db, max_epochs=100000, max_time_min=0.05), tmp_path / "run",
                     build_model=build_stand_in, log=quiet).fit()
    assert result.stopped == "max_time"
    assert time.monotonic() - t0 < 3.0 + 5.0  # 3 s budget, setup excluded from the budget is small
    load_checkpoint(tmp_path / "run" / "checkpoint.pt")


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_train import build_stand_in, make_config
    from ase_wavecalc.train.trainer import Trainer
    r = Trainer(make_config({db!r}, max_epochs=100000), {run!r}, build_model=build_stand_in,
                log=print).fit()
    print("STOPPED", r.stopped, r.steps, flush=True)
    sys.exit(0 if r.stopped == "signal" else 3)
""")


def test_sigterm_leaves_a_loadable_checkpoint(water_db, tmp_path):
    run_dir = tmp_path / "run"
    script = SIGTERM_SCRIPT.format(tests=os.path.dirname(__file__), db=str(water_db), run=str(run_dir))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        deadline = time.monotonic() + 40
        while not (run_dir / "metrics.csv").is_file():  # at least one epoch done
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "STOPPED signal" in out
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["progress"]["step"] >= 4
    assert not [p for p in os.listdir(run_dir) if ".tmp" in p]


# ----------------------------------------------------------------------------------------------------
# evaluate and export

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


TINY_MODEL = ("channels = 8\nnum_layers = 1\npair_channels = 8\npair_hidden = 16\n"
              "radial_hidden = 16\nnum_radial = 4\npair_num_radial = 4")


def write_tiny_config(path, db, model="", loss="", optimizer="lr = 5e-3\nema_decay = 0.5", run="",
                      max_epochs=2):
    """A training config for the tiny real model on ``db`` (12/4/4 frames), written to ``path``."""
    loss = loss or "fock_mse = 1.0\nfock_mae = 1.0"
    path.write_text(f"""[data]
seed = 0
[[data.datasets]]
path = "{db}"
train = 12
val = 4
test = 4

[model]
{TINY_MODEL}
{model}

[loss]
{loss}

[optimizer]
{optimizer}

[run]
batch_size = 4
max_epochs = {max_epochs}
progress = false
threads = 1
{run}
""")
    return path


def test_freeze_hamiltonian_trains_only_the_delta_hcore_head():
    """Stage 2 (run.trainable = 'delta_hcore_head'): the Fock matrix cannot change, Delta h can."""
    from ase_wavecalc.model.network import build_model, default_config
    from ase_wavecalc.train.stages import freeze_hamiltonian

    torch.manual_seed(0)
    model = build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1,
                                       pair_channels=4, radial_hidden=8, pair_hidden=8,
                                       delta_hcore_head=True))
    with torch.no_grad():  # the Delta h head starts at zero: give it something to change
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    numbers = torch.tensor([8, 1, 1])
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.8, 0.0, 0.0], [-0.4, 1.7, 0.0]])
    before = model(numbers, positions, None)
    assert freeze_hamiltonian(model) > 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        out = model(numbers, positions, None)
        loss = out["fock"].square().sum() + out["delta_hcore"].square().sum() + out["atomic_energy_sum"].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model(numbers, positions, None)
    assert torch.equal(after["fock"], before["fock"])
    assert not torch.allclose(after["delta_hcore"], before["delta_hcore"])
    assert not torch.allclose(after["atomic_energy_sum"], before["atomic_energy_sum"])


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


def _two_stage_run(tmp_path, db, stage2_model, stage2_loss, trainable,
                   stage1_model="delta_hcore_head = true"):
    """Train a tiny F-only stage 1, then stage 2 from its weights; returns both models and their outputs
    on two frames (float32)."""
    from ase_wavecalc.cli import main
    from ase_wavecalc.train.cli_export import load_run_model

    stage1 = write_tiny_config(tmp_path / "s1.toml", db, model=stage1_model,
                               loss="fock_mae = 1.0", optimizer="lr = 5e-3\nema_decay = 0.0")
    assert main(["train", str(stage1), "--out", str(tmp_path / "s1")]) == 0
    stage2 = write_tiny_config(tmp_path / "s2.toml", db, model=stage2_model, loss=stage2_loss,
                               optimizer="lr = 5e-3\nema_decay = 0.0",
                               run=f'init_weights = "{tmp_path / "s1"}"\ntrainable = "{trainable}"')
    assert main(["train", str(stage2), "--out", str(tmp_path / "s2")]) == 0
    m1, _ = load_run_model(tmp_path / "s1", "last")
    m2, _ = load_run_model(tmp_path / "s2", "last")
    batch = load_table(db, sha256=False).batch([0, 1], dtype=torch.float32)
    with torch.no_grad():
        o1 = m1(batch.numbers, batch.positions_bohr, batch.batch)
        o2 = m2(batch.numbers, batch.positions_bohr, batch.batch)
    return m1, m2, o1, o2


def test_energy_stage_adds_atom_correction_to_a_hamiltonian_only_run(water_db, tmp_path):
    """Stage 2 may add the per-atom energy correction to stage-1 weights that lack it: it starts at zero,
    trains, and the Fock head stays frozen."""
    m1, m2, o1, o2 = _two_stage_run(tmp_path, water_db, "delta_hcore_head = true\natom_correction_hidden = 8",
                                    "energy = 1.0\ngap_gate = 0.0", "delta_hcore_head")
    assert torch.equal(o1["fock"], o2["fock"])
    assert float(m2.atom_correction_mlp[-1].weight.detach().abs().sum()) > 0
    assert float(o2["learned_energy"].abs().sum()) > 0


def test_energy_gate_leaves_out_structures_with_a_closed_gap(water_db):
    """A structure whose predicted virtual level fell below the HOMO is left out of the energy and force
    terms (its aufbau energy is off by a fraction of a Hartree and would dominate the step)."""
    from ase_wavecalc.electronic import solve_fock
    from ase_wavecalc.train.losses import WeightedLoss

    table = load_table(water_db, keys=("e_tot", "gradient", "hcore"), sha256=False)
    batch = table.batch([0, 1], dtype=torch.float64)
    n = batch.n_occ
    fock = batch.fock.clone()
    eps, c = solve_fock(fock[1], batch.overlap[1])
    sc = batch.overlap[1] @ c[:, n]
    fock[1] = fock[1] - 2.0 * (eps[n] - eps[n - 1]) * torch.outer(sc, sc)   # LUMO drops below the HOMO
    fock[0] = fock[0] + 1e-3 * torch.eye(fock.shape[-1], dtype=fock.dtype)  # a small, smooth error
    gated = WeightedLoss({"energy": 1.0, "forces": 1.0})
    batch.positions_bohr.requires_grad_(True)
    _, parts = gated({"fock": fock}, batch)
    one = table.batch([0], dtype=torch.float64)
    one.positions_bohr.requires_grad_(True)
    _, parts_one = gated({"fock": fock[:1]}, one)
    assert parts["energy"] == pytest.approx(parts_one["energy"], rel=1e-12) and parts["energy"] > 0
    assert parts["forces"] == pytest.approx(parts_one["forces"], rel=1e-12)
    ungated = WeightedLoss({"energy": 1.0, "gap_gate": 0.0})
    _, parts_all = ungated({"fock": fock}, batch)
    assert parts_all["energy"] > 100 * parts["energy"]
    with pytest.raises(ConfigError, match="gap_gat"):
        parse_config({"data": {"datasets": [{"path": "x", "train": 1}]}, "loss": {"gap_gat": 0.5, "fock_mae": 1}})


def test_atom_correction_stage_keeps_the_hamiltonian_and_trains_its_own_trunk(water_db, tmp_path):
    """run.trainable = 'atom_correction' on earlier weights without the correction trunk: F and Delta h
    stay bit-identical, the trunk and MLP (new, the MLP starting at zero) learn."""
    m1, m2, o1, o2 = _two_stage_run(
        tmp_path, water_db,
        "delta_hcore_head = true\natom_correction_hidden = 8\nenergy_layers = 1\nenergy_channels = 4",
        "energy = 1.0\nforces = 1.0\ngap_gate = 0.0", "atom_correction")
    assert torch.equal(o1["fock"], o2["fock"]) and torch.equal(o1["delta_hcore"], o2["delta_hcore"])
    assert float(o2["learned_energy"].abs().sum()) > 0
    # training ran the correction alone on precomputed frozen-Hamiltonian energies: the same energy and
    # force errors as the full model's path
    import copy

    from ase_wavecalc.providers import ModelProvider
    from ase_wavecalc.train.losses import WeightedLoss
    model = m2.double()
    etable = load_table(water_db, keys=("e_tot", "gradient", "hcore"), sha256=False)
    base = copy.deepcopy(model)
    with torch.no_grad():
        base.element_energy_offsets.zero_()
    base.atom_correction_mlp = None
    provider = ModelProvider(base, card={"name": "base"})
    results = [provider.compute(etable.numbers.numpy(), etable.positions_bohr[r].numpy(), want_gradient=True)
               for r in (0, 1)]
    terms = WeightedLoss({"energy": 1.0, "forces": 1.0, "gap_gate": 0.0})
    full = etable.batch([0, 1])
    full.positions_bohr.requires_grad_(True)
    _, parts_full = terms(model(full.numbers, full.positions_bohr, full.batch), full)
    fast = etable.batch([0, 1])
    fast.base_energy = torch.tensor([float(r.energy) for r in results], dtype=torch.float64)
    fast.base_gradient = torch.stack([torch.as_tensor(np.asarray(r.gradient)) for r in results])
    fast.positions_bohr.requires_grad_(True)
    _, parts_fast = terms(model(fast.numbers, fast.positions_bohr, fast.batch, energy_only=True), fast)
    for k in ("energy", "forces"):
        assert parts_fast[k] == pytest.approx(parts_full[k], rel=1e-8)
    # the export follows init_weights back to stage 1 and ships both stages' configs and metrics
    from ase_wavecalc.train.cli_export import export_run
    card = export_run(tmp_path / "s2", tmp_path / "model", refit_frames=0)
    assert [st["run"] for st in card["training_stages"]] == ["s1", "s2"]
    assert card["training_stages"][1]["trainable"] == "atom_correction"
    for st in card["training_stages"]:
        for name in st["files"].values():
            assert (tmp_path / "model" / name).is_file()
    # a run started from the exported model inherits the stages its card lists: the chain stays whole
    from ase_wavecalc.train.cli_export import _copy_stage_files, training_stages
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "config.toml").write_text((tmp_path / "s2" / "config.toml").read_text().replace(
        str(tmp_path / "s1"), str(tmp_path / "model")))
    (tmp_path / "s3" / "metrics.csv").write_text((tmp_path / "s2" / "metrics.csv").read_text())
    stages = training_stages(tmp_path / "s3")
    assert [st["run"] for st in stages] == ["s1", "s2", "s3"]
    (tmp_path / "model3").mkdir()
    entries = _copy_stage_files(stages, tmp_path / "model3")
    assert [sorted(e["files"]) for e in entries] == [sorted(e["files"]) for e in card["training_stages"]] + [
        ["config", "metrics"]]
    for e in entries:
        for name in e["files"].values():
            assert (tmp_path / "model3" / name).is_file()
    torch.manual_seed(0)                      # the trainer's initialization (run.seed = 0)
    fresh = m2.__class__(m2.config)
    trunk_moved = [not torch.equal(a, b) for (k, a), b in zip(m2.state_dict().items(), fresh.state_dict().values())
                   if k.startswith("energy_interactions.")]
    assert any(trunk_moved)


def test_inherited_stages_of_in_place_exports_and_old_cards(tmp_path):
    """Stage inheritance from model cards: a run exported into the folder it started from is not listed
    twice, an old card whose first stage names its own folder is read once, and stages inherited from a
    card that does not record their loss (the older schema) leave fock_trained to that card."""
    import json

    from ase_wavecalc.train.cli_export import _stages_of_model, fock_trained, training_stages

    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.safetensors").write_bytes(b"")
    stages = [{"run": "s1", "init_weights": None, "files": {}},            # an old entry: no loss
              {"run": "s2", "init_weights": str(model), "loss": {"energy": 1.0}, "files": {}}]
    (model / "model.json").write_text(json.dumps({"fock_trained": True, "training_stages": stages}))
    run = tmp_path / "s2"            # s2 started from the model and was exported back into it
    run.mkdir()
    write_tiny_config(run / "config.toml", "data.db", loss="energy = 1.0", run=f'init_weights = "{model}"')
    got = training_stages(run)
    assert [st["run"] for st in got] == ["s1", "s2"]
    assert fock_trained(run, got) is True
    (model / "model.json").write_text(json.dumps({"fock_trained": False, "training_stages": stages}))
    assert fock_trained(run, training_stages(run)) is False
    # an old card whose first stage started from its own folder (exported in place)
    (model / "model.json").write_text(json.dumps({"training_stages": stages[1:]}))
    assert [st["run"] for st in _stages_of_model(model)] == ["s2"]


def test_checkpoints_of_the_old_so2_basis_are_refused(tmp_path):
    """Checkpoints and model files written before the canonical SO(2) path basis hold weights for a
    machine-dependent basis: resuming, init_weights and export refuse them with a clear message."""
    from ase_wavecalc.train.checkpoint import initial_weights, load_best
    from ase_wavecalc.train.config import TrainingError

    run = tmp_path / "old_run"
    run.mkdir()
    torch.save({"format": "ase_wavecalc.train.checkpoint/1", "model": {}}, run / "checkpoint.pt")
    torch.save({"format": "ase_wavecalc.train.checkpoint/1/best", "model": {}}, run / "best.pt")
    with pytest.raises(TrainingError, match="canonical SO\\(2\\) path basis"):
        load_checkpoint(run / "checkpoint.pt")
    with pytest.raises(TrainingError, match="canonical SO\\(2\\) path basis"):
        load_best(run / "best.pt")
    with pytest.raises(TrainingError, match="canonical SO\\(2\\) path basis"):
        initial_weights(run)
    model_dir = tmp_path / "old_model"
    model_dir.mkdir()
    (model_dir / "model.json").write_text(json.dumps({"format_version": 1, "config": {"basis": "sto-3g",
                                                                                      "elements": [1]}}))
    (model_dir / "weights.safetensors").write_bytes(b"")
    with pytest.raises(TrainingError, match="predates the canonical SO\\(2\\) path basis"):
        initial_weights(model_dir)


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


def test_readout_energy_trains_with_the_fock_loss_and_alone(water_db, tmp_path):
    """energy_path = "readout": trained on F, energies and forces together, the energy MLP learns and the
    validation energy error falls below that of the fitted offsets alone; without F terms (the MLIP of the
    same network) each step runs the atom trunk only, and the validation F columns are NaN."""
    import csv

    from ase_wavecalc.cli import main
    from ase_wavecalc.train.cli_export import load_run_model

    model = 'energy_path = "readout"\nreadout_hidden = 16'
    joint = write_tiny_config(tmp_path / "joint.toml", water_db, model=model,
                              loss="fock_mae = 1.0\nenergy = 100.0\nforces = 10.0",
                              optimizer="lr = 5e-3\nema_decay = 0.0", max_epochs=6)
    assert main(["train", str(joint), "--out", str(tmp_path / "joint")]) == 0
    with open(tmp_path / "joint" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first, last = float(rows[0]["val_energy_rmse_mev"]), float(rows[-1]["val_energy_rmse_mev"])
    assert np.isfinite(float(rows[-1]["val_fock_mae_uha"]))
    m, _ = load_run_model(tmp_path / "joint", "last")
    assert float(m.readout_mlp[-1].weight.detach().abs().sum()) > 0
    assert last < first

    alone = write_tiny_config(tmp_path / "alone.toml", water_db, model=model, loss="energy = 100.0\nforces = 10.0",
                              optimizer="lr = 5e-3\nema_decay = 0.0", max_epochs=2)
    calls = []
    from ase_wavecalc.model import network
    original = network.HamiltonianModel.forward

    def spy(self, *args, **kwargs):
        calls.append(bool(kwargs.get("energy_only", False)))
        return original(self, *args, **kwargs)

    network.HamiltonianModel.forward = spy
    try:
        assert main(["train", str(alone), "--out", str(tmp_path / "alone")]) == 0
    finally:
        network.HamiltonianModel.forward = original
    assert calls and all(calls)
    with open(tmp_path / "alone" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert np.isnan(float(rows[-1]["val_fock_mae_uha"])) and np.isfinite(float(rows[-1]["val_force_rmse_mev_a"]))


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


def test_energy_readout_stage_keeps_the_fock_network(water_db, tmp_path):
    """run.trainable = "energy_readout" on a readout model with its own energy trunk: F is bit-identical to
    the stage it started from, while the readout MLP and the energy trunk learn."""
    m1, m2, o1, o2 = _two_stage_run(tmp_path, water_db,
                                    'energy_path = "readout"\nreadout_hidden = 8\nenergy_layers = 1\n'
                                    'energy_channels = 4', "energy = 1.0\nforces = 1.0", "energy_readout",
                                    stage1_model='energy_path = "readout"\nreadout_hidden = 8')
    assert torch.equal(o1["fock"], o2["fock"])
    assert float(m2.readout_mlp[-1].weight.detach().abs().sum()) > 0
    moved = [k for k, v in m2.state_dict().items() if k.startswith("energy_interactions.")]
    assert moved


def test_readout_standardization_is_set_from_training_frames_and_saved(water_db, tmp_path):
    """readout_standardize: before the first step the trainer sets the shift and scale of every readout
    input from training frames (standardized inputs then have mean ~0 and std ~1 there), and they travel
    with the weights (export -> load gives the same energy)."""
    from ase_wavecalc.cli import main
    from ase_wavecalc.model.io import load_model
    from ase_wavecalc.train.cli_export import load_run_model

    cfg = write_tiny_config(tmp_path / "s.toml", water_db,
                            model='energy_path = "readout"\nreadout_hidden = 8\nreadout_standardize = true',
                            loss="fock_mae = 1.0\nenergy = 1.0", optimizer="lr = 1e-3\nema_decay = 0.0", max_epochs=1)
    from ase_wavecalc.train.config import load_config

    trainer = Trainer(load_config(cfg), tmp_path / "probe", log=quiet)
    trainer.run_dir.mkdir(parents=True)
    trainer._load_data()
    trainer._build(None)
    table = trainer.tables[0]
    batch = table.batch(np.asarray(trainer.rows["train"][0]), dtype=trainer.dtype, table=0)
    with torch.no_grad():
        x = trainer.model(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)["readout_inputs"]
        z = trainer.model.readout_norm(x)
    varying = x.std(0) > 1e-6
    assert float(z[:, varying].mean(0).abs().max()) < 1e-4
    std = x.std(0)
    expect = std / (std + 1e-3 * std.max())          # unit std, but features 1000x quieter than the loudest
    assert torch.allclose(z.std(0), expect, atol=1e-4)    # are not blown up to it (noise)
    assert float(expect[varying].median()) > 0.5

    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 0
    m, _ = load_run_model(tmp_path / "run", "last")
    batch = load_table(water_db, sha256=False).batch(np.arange(12), dtype=torch.float32)
    with torch.no_grad():
        out = m(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)
    assert not torch.allclose(m.readout_norm.scale, torch.ones_like(m.readout_norm.scale))
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "model"), "--weights", "last",
                 "--refit-frames", "0"]) == 0
    loaded, _ = load_model(tmp_path / "model", dtype=torch.float32)
    with torch.no_grad():
        again = loaded(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)
    assert torch.allclose(again["energy"], out["energy"], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_sigkill_loop_loses_and_repeats_nothing(water_db, tmp_path):
    """`wavecalc train` killed with SIGKILL at random moments, again and again, and restarted each time
    (--resume once a checkpoint exists): the finished run has every epoch exactly once in metrics.csv, a
    loadable checkpoint, no temporary files, and the same weights as a run never interrupted."""
    import csv
    import random

    cfg = write_tiny_config(tmp_path / "k.toml", water_db, model='energy_path = "readout"\nreadout_hidden = 8',
                            loss="fock_mae = 1.0\nenergy = 1.0", optimizer="lr = 5e-3\nema_decay = 0.5",
                            run="checkpoint_every_min = 0.003\ndeterministic = true", max_epochs=8)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(run_dir, resume):
        return [sys.executable, "-m", "ase_wavecalc.cli", "train", str(cfg), "--out", str(run_dir), "--threads", "1",
                "--no-progress"] + (["--resume"] if resume else [])

    reference = tmp_path / "straight"
    assert subprocess.run(command(reference, False), env=env, capture_output=True, timeout=300).returncode == 0

    run_dir = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen(command(run_dir, (run_dir / "checkpoint.pt").is_file()), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 5.0))     # start-up takes ~1-2 s; then epochs of a fraction of a second
        if proc.poll() is not None:
            break                             # finished before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    done = subprocess.run(command(run_dir, (run_dir / "checkpoint.pt").is_file()), env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 2
    with open(run_dir / "metrics.csv", newline="") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == list(range(1, 9))
    assert not [p for p in os.listdir(run_dir) if ".tmp" in p]
    a, b = load_checkpoint(run_dir / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
    assert a["progress"]["step"] == b["progress"]["step"]
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    """A SIGKILL during an atomic write leaves `.NAME.tmpPID`; the next start removes it, but never a live
    process's temporary or a complete file."""
    from ase_wavecalc.train.checkpoint import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".best.pt.tmp{dead.pid}"
    stale_png = tmp_path / f".learning_curve.png.tmp{dead.pid}.png"
    live = tmp_path / f".checkpoint.pt.tmp{os.getpid()}"
    keep = tmp_path / "best.pt"
    for p in (stale, stale_png, live, keep):
        p.write_bytes(b"x")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted([stale.name, stale_png.name])
    assert live.exists() and keep.exists() and not stale.exists() and not stale_png.exists()
