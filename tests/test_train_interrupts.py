"""Stopping a training run: the time limit (on a virtual clock), SIGTERM, and SIGKILL at chosen points again
and again with resume; temporaries of killed writers. Each kill and signal comes from the process itself at
a point the test chooses, so nothing here depends on how fast the machine is.

The data are the session's water dataset (``water_db`` in conftest.py); most runs use the small stand-in
network of _train_helpers.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from _train_helpers import build_stand_in, make_config, quiet, write_tiny_config

from ase_wavecalc.train.checkpoint import load_checkpoint
from ase_wavecalc.train.trainer import Trainer


class _VirtualClock:
    """Stands in for the ``time`` module of the trainer and its checkpoint writer: a clock that moves only
    when the test moves it (a training step ``STEP_S`` seconds), so that a test of the time limit does not
    depend on how fast this machine is."""

    STEP_S = 1.0

    def __init__(self):
        self.now = 0.0

    def monotonic(self):
        return self.now

    perf_counter = process_time = time = monotonic

    def __getattr__(self, name):
        return getattr(time, name)


def test_time_limit_stops_cleanly(water_db, tmp_path, monkeypatch):
    """run.max_time_min: the run stops before its budget is spent (a step, a validation and a checkpoint
    still fit), having used most of it, and leaves a loadable checkpoint. Time is a virtual clock."""
    from ase_wavecalc.train import checkpoint, trainer

    clock = _VirtualClock()
    monkeypatch.setattr(trainer, "time", clock)
    monkeypatch.setattr(checkpoint, "time", clock)
    step = Trainer.train_step

    def timed_step(self, batch):
        clock.now += clock.STEP_S
        return step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", timed_step)
    result = Trainer(make_config(water_db, max_epochs=100000, max_time_min=1.0), tmp_path / "run",
                     build_model=build_stand_in, log=quiet).fit()
    budget = 60.0
    assert result.stopped == "max_time"
    assert 0.9 * budget <= clock.now <= budget and result.steps == round(clock.now / clock.STEP_S)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["progress"]["step"] == result.steps


SIGTERM_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from _train_helpers import build_stand_in, make_config
    from ase_wavecalc.train.trainer import Trainer
    step, calls = Trainer.train_step, []

    def step_with_sigterm(self, batch):   # SIGTERM arrives during the 6th step (mid epoch 2)
        calls.append(1)
        if len(calls) == 6:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, batch)

    Trainer.train_step = step_with_sigterm
    r = Trainer(make_config({db!r}, max_epochs=100000), {run!r}, build_model=build_stand_in,
                log=print).fit()
    print("STOPPED", r.stopped, r.steps, flush=True)
    sys.exit(0 if r.stopped == "signal" else 3)
""")


def test_sigterm_leaves_a_loadable_checkpoint(water_db, tmp_path):
    """SIGTERM during a step: the step finishes, the run stops before the next one and saves it."""
    run_dir = tmp_path / "run"
    script = SIGTERM_SCRIPT.format(tests=os.path.dirname(__file__), db=str(water_db), run=str(run_dir))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env)
    assert done.returncode == 0, done.stdout
    assert "STOPPED signal 6" in done.stdout
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["progress"]["step"] == 6
    assert not [p for p in os.listdir(run_dir) if ".tmp" in p]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from ase_wavecalc.cli import main
    from ase_wavecalc.train import trainer
    where, at = sys.argv[1], int(sys.argv[2])
    calls = []

    def killing(real, after):
        def call(*args, **kwargs):
            calls.append(1)
            if len(calls) == at and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(*args, **kwargs)
            if len(calls) == at and after:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        return call

    if where == "step":             # before the at-th training step of this process
        trainer.Trainer.train_step = killing(trainer.Trainer.train_step, after=False)
    elif where == "rename":         # an atomic write's temporary complete, not yet renamed
        os.replace = killing(os.replace, after=False)
    elif where == "metrics-row":    # an epoch's row appended to metrics.csv, its checkpoint not yet saved
        trainer.append_csv = killing(trainer.append_csv, after=True)
    sys.exit(main(sys.argv[3:]))
""")


@pytest.mark.slow
def test_sigkill_loop_loses_and_repeats_nothing(water_db, tmp_path):
    """`wavecalc train` killed with SIGKILL again and again (before a step, between writing an atomic file's
    temporary and renaming it, between an epoch's metrics row and its checkpoint) and restarted each time
    (--resume once a checkpoint exists): the finished run has every epoch exactly once in metrics.csv, a
    loadable checkpoint, no temporary files, and the weights of a run never interrupted."""
    import csv

    cfg = write_tiny_config(tmp_path / "k.toml", water_db, model='energy_path = "readout"\nreadout_hidden = 8',
                            loss="fock_mae = 1.0\nenergy = 1.0", optimizer="lr = 5e-3\nema_decay = 0.5",
                            run='checkpoint_every_min = 0.0\ndeterministic = true\nprecision = "float64"',
                            max_epochs=8)   # 3 steps per epoch, 24 in all; a checkpoint after every step
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def command(run_dir, kill=("none", 0)):
        resume = ["--resume"] if (run_dir / "checkpoint.pt").is_file() else []
        return [sys.executable, "-c", KILL_SCRIPT, *kill[0:1], str(kill[1]), "train", str(cfg), "--out",
                str(run_dir), "--threads", "1", "--no-progress", *resume]

    reference = tmp_path / "straight"
    assert subprocess.run(command(reference), env=env, capture_output=True).returncode == 0

    run_dir = tmp_path / "killed"
    # each kill leaves the next run enough work to reach its own (21 of the 24 steps at most are done)
    plan = [("step", 5), ("rename", 3), ("metrics-row", 1), ("step", 4), ("rename", 7)]
    for kill in plan:
        proc = subprocess.run(command(run_dir, kill), env=env, capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL, (kill, proc.stderr[-2000:])
    done = subprocess.run(command(run_dir), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(run_dir / "metrics.csv", newline="") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == list(range(1, 9))
    assert not [p for p in os.listdir(run_dir) if ".tmp" in p]
    a, b = load_checkpoint(run_dir / "checkpoint.pt"), load_checkpoint(reference / "checkpoint.pt")
    assert a["progress"]["step"] == b["progress"]["step"] == 24
    for k, v in b["model"].items():   # the same run, to rounding
        torch.testing.assert_close(a["model"][k], v, rtol=1e-10, atol=1e-12, msg=k)


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


# ----------------------------------------------------------------------------------------------------
# evaluate and export
