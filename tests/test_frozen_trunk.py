"""A readout trained on a frozen Fock trunk reads each frame's trunk descriptors, and their derivatives in the
positions, computed once (train/frozen_trunk.py): a step must give the energies, forces and weight gradients
that running the trunk gives, at every frame, and a run must train as it would without them."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from _train_helpers import TINY_MODEL, write_tiny_config

from ase_wavecalc.energy_paths import energy_path_for
from ase_wavecalc.model import build_model, default_config
from ase_wavecalc.train import frozen_trunk
from ase_wavecalc.train.frozen_trunk import FrozenTrunkInvariants


def _readout_model(energy_layers=1):
    cfg = dict(line.split(" = ") for line in TINY_MODEL.splitlines())
    cfg = {k: int(v) for k, v in cfg.items()}
    config = default_config(elements=[1, 8], basis="sto-3g", energy_path="readout", readout_hidden=8,
                            energy_layers=energy_layers, energy_channels=4, **cfg)
    torch.manual_seed(1)
    model = build_model(config).double()
    with torch.no_grad():      # a readout that is not zero (its last layer starts at zero)
        model.readout_mlp[-1].weight.normal_(0.0, 1.0)
    path = energy_path_for(model.config)
    phase = path.phase("energy_readout", {"energy": 1.0, "forces": 1.0})
    phase.freeze(model)
    return model, path, phase


def _water_frames(n_frames, seed):
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.2217], [0.0, 1.4309, -0.8867], [0.0, -1.4309, -0.8867]])
    pos = np.concatenate([base + rng.normal(scale=0.15, size=base.shape) for _ in range(n_frames)])
    return torch.tensor(pos), torch.tensor([8, 1, 1] * n_frames), torch.arange(n_frames).repeat_interleave(3)


def _energy_forces_grads(model, numbers, pos, batch, cache=None, frames=None):
    """Energies, forces and the weight gradient of an energy + force loss, as a training step computes them."""
    x = pos.clone().requires_grad_(True)
    kw = {}
    if cache is not None:
        b = SimpleNamespace(table=0, frame=torch.as_tensor(frames), n_structures=len(frames), n_atoms=3,
                            numbers=numbers, positions_bohr=x)
        kw["fock_invariants"] = cache(b)
    e = model(numbers, x, batch, energy_only=True, **kw)["energy"]
    g, = torch.autograd.grad(e.sum(), x, create_graph=True)
    loss = (e - 0.1).square().sum() + (g - 0.01).square().sum()
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, trainable)
    return e.detach(), -g.detach(), torch.cat([q.reshape(-1) for q in grads])


def test_cached_descriptors_give_the_trunks_energies_forces_and_weight_gradients():
    model, path, phase = _readout_model()
    cache = FrozenTrunkInvariants.for_phase(model, [SimpleNamespace(path="a.db")], path, phase, True, 64,
                                            log=lambda _: None)
    assert cache is not None
    pos, numbers, batch = _water_frames(3, seed=0)
    live = _energy_forces_grads(model, numbers, pos, batch)
    first = _energy_forces_grads(model, numbers, pos, batch, cache, [10, 11, 12])    # builds the entries
    again = _energy_forces_grads(model, numbers, pos, batch, cache, [10, 11, 12])    # reads them
    for a, b, c in zip(live, first, again):
        assert float(a.abs().max()) > 0
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(c, a, rtol=1e-9, atol=1e-12)
    # a frame id met again at another geometry (a dataset rewritten) is computed anew, not read
    moved, _, _ = _water_frames(3, seed=1)
    torch.testing.assert_close(_energy_forces_grads(model, numbers, moved, batch, cache, [10, 11, 12])[1],
                               _energy_forces_grads(model, numbers, moved, batch)[1], rtol=1e-9, atol=1e-12)


def test_no_cache_where_the_trunk_learns_or_no_force_is_trained():
    model, path, phase = _readout_model()
    tables = [SimpleNamespace(path="a.db")]
    assert FrozenTrunkInvariants.for_phase(model, tables, path, phase, False, 64) is None     # energy only
    assert FrozenTrunkInvariants.for_phase(model, tables, path, phase, True, 0) is None       # switched off
    everything = path.phase("all", {"energy": 1.0, "forces": 1.0})
    for p in model.parameters():       # a fresh model: every weight learns
        p.requires_grad_(True)
    everything.freeze(model)
    assert FrozenTrunkInvariants.for_phase(model, tables, path, everything, True, 64) is None


def test_another_trunk_does_not_read_the_first_ones_entries():
    """The entries outlive a trainer (a fit's active rounds reuse them); a trunk with other weights must
    compute its own."""
    model, path, phase = _readout_model()
    tables = [SimpleNamespace(path="a.db")]
    pos, numbers, batch = _water_frames(2, seed=0)
    cache = FrozenTrunkInvariants.for_phase(model, tables, path, phase, True, 64, log=lambda _: None)
    _energy_forces_grads(model, numbers, pos, batch, cache, [1, 2])
    with torch.no_grad():
        model.interactions[0].parameters().__next__().mul_(1.5)
    other = FrozenTrunkInvariants.for_phase(model, tables, path, phase, True, 64, log=lambda _: None)
    torch.testing.assert_close(_energy_forces_grads(model, numbers, pos, batch, other, [1, 2])[1],
                               _energy_forces_grads(model, numbers, pos, batch)[1], rtol=1e-9, atol=1e-12)


def test_frames_beyond_the_memory_cap_run_the_trunk_and_are_not_built_again(monkeypatch):
    monkeypatch.setattr(frozen_trunk, "_STORE", {"fingerprint": None})
    model, path, phase = _readout_model()
    pos, numbers, batch = _water_frames(2, seed=0)
    lines = []
    tiny = FrozenTrunkInvariants.for_phase(model, [SimpleNamespace(path="b.db")], path, phase, True, 1e-6,
                                           log=lines.append)
    builds = []
    add = tiny._add
    monkeypatch.setattr(tiny, "_add", lambda *a: builds.append(1) or add(*a))
    b = SimpleNamespace(table=0, frame=torch.tensor([1, 2]), n_structures=2, n_atoms=3, numbers=numbers,
                        positions_bohr=pos)
    assert tiny(b) is None and "frames cached" in lines[-1]
    assert tiny(b) is None and tiny(b) is None
    assert len(builds) == 1          # the cap reached, no frame is built (and thrown away) at every step


def _stage1(water_db, tmp_path):
    from ase_wavecalc.cli import main

    stage1 = write_tiny_config(tmp_path / "s1.toml", water_db, model='energy_path = "readout"\nreadout_hidden = 8',
                               loss="fock_mae = 1.0", optimizer="lr = 5e-3\nema_decay = 0.0")
    assert main(["train", str(stage1), "--out", str(tmp_path / "s1")]) == 0
    return tmp_path / "s1"


def _readout_config(path, water_db, stage1, run="", max_epochs=3):
    return write_tiny_config(
        path, water_db, model='energy_path = "readout"\nreadout_hidden = 8\nenergy_layers = 1\nenergy_channels = 4',
        loss="energy = 1.0\nforces = 1.0", optimizer="lr = 5e-3\nema_decay = 0.5", max_epochs=max_epochs,
        run=f'init_weights = "{stage1}"\ntrainable = "energy_readout"\n{run}')


def test_a_readout_run_trains_as_it_would_running_the_trunk(water_db, tmp_path):
    """Stage 2 (energy_readout on a stage-1 Fock network) with and without the kept descriptors: the same
    validation losses epoch by epoch (rounding apart), every frame read from the entries."""
    from ase_wavecalc.cli import main

    stage1 = _stage1(water_db, tmp_path)
    losses = {}
    for mb in (0, 64):
        cfg = _readout_config(tmp_path / f"s2_{mb}.toml", water_db, stage1,
                              run=f'precision = "float64"\nfrozen_trunk_cache_mb = {mb}')
        assert main(["train", str(cfg), "--out", str(tmp_path / f"s2_{mb}")]) == 0
        rows = np.genfromtxt(tmp_path / f"s2_{mb}" / "metrics.csv", delimiter=",", names=True)
        losses[mb] = rows["val_loss"]
        log = (tmp_path / f"s2_{mb}" / "train.log").read_text()
        assert ("computed once per frame" in log) == (mb > 0)
        if mb:    # every training and validation frame was read from the kept entries
            assert len(frozen_trunk._STORE["entries"]) == 16 and not frozen_trunk._STORE["full"]
    assert np.all(np.isfinite(losses[0])) and losses[0][-1] != losses[0][0]
    np.testing.assert_allclose(losses[64], losses[0], rtol=1e-8)


def test_a_readout_run_resumed_in_a_new_process_repeats_the_uninterrupted_one(water_db, tmp_path):
    """Entries are rebuilt after a restart (the store is per process): the same ones, so 8 steps at once and
    4 + resume + 4 give the same weights (float32, as fits train; held to far below a step's change)."""
    from ase_wavecalc.cli import main
    from ase_wavecalc.train.checkpoint import load_checkpoint

    stage1 = _stage1(water_db, tmp_path)
    straight = _readout_config(tmp_path / "straight.toml", water_db, stage1, run="max_steps = 8", max_epochs=10)
    assert main(["train", str(straight), "--out", str(tmp_path / "straight")]) == 0
    frozen_trunk.release()
    half = _readout_config(tmp_path / "half.toml", water_db, stage1, run="max_steps = 4", max_epochs=10)
    assert main(["train", str(half), "--out", str(tmp_path / "halves")]) == 0
    frozen_trunk.release()           # a new process: no entries
    assert main(["train", str(straight), "--out", str(tmp_path / "halves"), "--resume"]) == 0
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "halves" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-9, msg=k)
