"""Multi-stage training: which weights learn in a stage started from earlier weights (`run.trainable`:
the Delta h head, the per-atom energy correction and its trunk, the energy readout) while the Fock matrix
stays bit-identical; the energy terms' gate on structures with a closed gap; readout energies trained with
and without the Fock loss, and the readout's input standardization; the stages an exported model's card
records and passes on; checkpoints of the old SO(2) path basis refused.

Runs use the tiny real model on the session's water dataset (``water_db`` in conftest.py); the one-run
machinery (trainer, resume, export, metrics) is tested in test_train.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _train_helpers import quiet, write_tiny_config

from ase_wavecalc.train.checkpoint import load_checkpoint
from ase_wavecalc.train.config import ConfigError, parse_config
from ase_wavecalc.train.data import load_table
from ase_wavecalc.train.trainer import Trainer


# ----------------------------------------------------------------------------------------------------
# which weights learn in a stage

def test_delta_hcore_head_phase_trains_only_the_delta_hcore_head():
    """Stage 2 (run.trainable = 'delta_hcore_head', a phase of the Hamiltonian energy path): the Fock matrix
    cannot change, Delta h can."""
    from ase_wavecalc.energy_paths import energy_path_for
    from ase_wavecalc.model.network import build_model, default_config

    torch.manual_seed(0)
    model = build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1,
                                       pair_channels=4, radial_hidden=8, pair_hidden=8,
                                       delta_hcore_head=True)).double()
    with torch.no_grad():  # the Delta h head starts at zero: give it something to change
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    numbers = torch.tensor([8, 1, 1])
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.8, 0.0, 0.0], [-0.4, 1.7, 0.0]], dtype=torch.float64)
    before = model(numbers, positions, None)
    assert energy_path_for(model.config).phase("delta_hcore_head", {"energy": 1.0}).freeze(model) > 0
    frozen = {k: p.detach().clone() for k, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(3):
        out = model(numbers, positions, None)
        loss = out["fock"].square().sum() + out["delta_hcore"].square().sum() + out["atomic_energy_sum"].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model(numbers, positions, None)
    assert all(torch.equal(p, frozen[k]) for k, p in model.named_parameters() if k in frozen)  # bit for bit
    torch.testing.assert_close(after["fock"], before["fock"], rtol=0, atol=1e-12)
    assert not torch.allclose(after["delta_hcore"], before["delta_hcore"])
    assert not torch.allclose(after["atomic_energy_sum"], before["atomic_energy_sum"])


def _two_stage_run(tmp_path, db, stage2_model, stage2_loss, trainable,
                   stage1_model="delta_hcore_head = true"):
    """Train a tiny F-only stage 1, then stage 2 from its weights; returns both models and their outputs
    on two frames (the float32 weights evaluated in float64, so that rounding stays far below a changed
    weight's effect)."""
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
    m1, m2 = m1.double(), m2.double()
    batch = load_table(db, sha256=False).batch([0, 1], dtype=torch.float64)
    with torch.no_grad():
        o1 = m1(batch.numbers, batch.positions_bohr, batch.batch)
        o2 = m2(batch.numbers, batch.positions_bohr, batch.batch)
    return m1, m2, o1, o2


def test_energy_stage_adds_atom_correction_to_a_hamiltonian_only_run(water_db, tmp_path):
    """Stage 2 may add the per-atom energy correction to stage-1 weights that lack it: it starts at zero,
    trains, and the Fock head stays frozen."""
    m1, m2, o1, o2 = _two_stage_run(tmp_path, water_db, "delta_hcore_head = true\natom_correction_hidden = 8",
                                    "energy = 1.0\ngap_gate = 0.0", "delta_hcore_head")
    torch.testing.assert_close(o2["fock"], o1["fock"], rtol=0, atol=1e-12)
    assert float(m2.atom_correction_mlp[-1].weight.detach().abs().sum()) > 0
    assert float(o2["learned_energy"].abs().sum()) > 0


def test_atom_correction_stage_keeps_the_hamiltonian_and_trains_its_own_trunk(water_db, tmp_path):
    """run.trainable = 'atom_correction' on earlier weights without the correction trunk: F and Delta h
    stay bit-identical, the trunk and MLP (new, the MLP starting at zero) learn."""
    m1, m2, o1, o2 = _two_stage_run(
        tmp_path, water_db,
        "delta_hcore_head = true\natom_correction_hidden = 8\nenergy_layers = 1\nenergy_channels = 4",
        "energy = 1.0\nforces = 1.0\ngap_gate = 0.0", "atom_correction")
    torch.testing.assert_close(o2["fock"], o1["fock"], rtol=0, atol=1e-12)
    torch.testing.assert_close(o2["delta_hcore"], o1["delta_hcore"], rtol=0, atol=1e-12)
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


def test_energy_readout_stage_keeps_the_fock_network(water_db, tmp_path):
    """run.trainable = "energy_readout" on a readout model with its own energy trunk: F is bit-identical to
    the stage it started from, while the readout MLP and the energy trunk learn."""
    m1, m2, o1, o2 = _two_stage_run(tmp_path, water_db,
                                    'energy_path = "readout"\nreadout_hidden = 8\nenergy_layers = 1\n'
                                    'energy_channels = 4', "energy = 1.0\nforces = 1.0", "energy_readout",
                                    stage1_model='energy_path = "readout"\nreadout_hidden = 8')
    torch.testing.assert_close(o2["fock"], o1["fock"], rtol=0, atol=1e-12)
    assert float(m2.readout_mlp[-1].weight.detach().abs().sum()) > 0
    moved = [k for k, v in m2.state_dict().items() if k.startswith("energy_interactions.")]
    assert moved


# ----------------------------------------------------------------------------------------------------
# the energy terms' gap gate

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


# ----------------------------------------------------------------------------------------------------
# readout energy

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


# ----------------------------------------------------------------------------------------------------
# stage records and old weights

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
