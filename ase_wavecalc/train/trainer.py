"""The training loop: AdamW + a plateau or cosine lr schedule + EMA, checkpoints that resume bit for bit.

Run directory (``Trainer.run_dir``):

| file | content |
|---|---|
| config.toml | the training config, verbatim |
| split.json | per dataset: path, sha256, counts and the train/val/test frame ids; the split seed |
| checkpoint.pt | latest full state (weights-only torch file, see ``checkpoint.CHECKPOINT_KEYS``) |
| best.pt | EMA weights of the epoch with the lowest validation loss |
| metrics.csv | one row per epoch (``runlog.CSV_COLUMNS``) |
| learning_curve.png | training loss and validation errors per epoch |
| train.log | the lines printed during training |

Stopping: ``run.max_epochs``, ``run.max_steps``, ``run.max_time_min`` (wall time of this invocation;
the loop stops early enough to write the final checkpoint) and SIGINT/SIGTERM (the current step
finishes, a checkpoint is written, ``fit`` returns; a second Ctrl-C interrupts at once). Checkpoints
are written every ``run.checkpoint_every_min`` minutes and at the end, to a temporary file first and
then renamed (``os.replace``), so a kill at any moment leaves the previous or the new checkpoint.

Resume: the checkpoint holds model, EMA, optimizer and scheduler state, the torch/numpy/python RNG
states, the data-order generator state at the start of the current epoch and the position in it, so
that training N steps at once and N/2 + resume + N/2 give identical weights.

This module holds the ``Trainer`` (set-up order, steps, validation, the loop) and ``TrainResult``; checkpoint
I/O and EMA are in ``checkpoint``, process state and signals in ``runtime``, metrics.csv and the plot in
``runlog``, the split and the model's initial state in ``setup``, the frozen Hamiltonian's energies of
``run.trainable = "atom_correction"`` in ``base_energies``. What ``run.trainable`` trains, and how its steps
run, is the phase of the model's energy path (``ase_wavecalc.energy_paths``, ``TrainingPhase``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import (CHECKPOINT_FORMAT, ExponentialMovingAverage, _rng_state, _set_rng_state,
                         load_checkpoint, remove_stale_temporaries, save_checkpoint)
from .config import RUN_OVERRIDABLE, TrainConfig, TrainingError, as_plain, config_differences, load_config
from .data import epoch_plan
from .losses import WeightedLoss, predicted_fock
from .metrics import UHA, fock_errors, orbital_errors
from .runlog import _dump_toml, _hms, append_csv, plot_learning_curve, truncate_csv
from .runtime import _isolated_global_state, _one_thread, _run_dir_lock, _StopSignals
from .compiled_step import CompiledSteps
from .frozen_trunk import FrozenTrunkInvariants
from .setup import (grow_train, load_data, load_initial_weights, mean_atom_blocks, model_config_for,
                    shift_energy_offsets)
from .stages import parameter_groups, plateau_step, set_scheduled_lrs
from ..units import BOHR, HARTREE

__all__ = ["Trainer", "TrainResult"]


# ----------------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    run_dir: str
    epochs: int
    steps: int
    stopped: str                 # "max_epochs", "max_steps", "max_time", "signal", "converged" (stop_on_plateau)
    train_time_s: float          # summed over all invocations of this run
    best_val_loss: float
    best_epoch: int
    structures_per_s: float      # training steps only, this invocation
    last_validation: dict = field(default_factory=dict)
    signum: int | None = None


class Trainer:
    """Train a Hamiltonian model as configured; ``fit()`` runs until a stop criterion.

    ``build_model``: the builder ``config dict -> nn.Module`` (default ``ase_wavecalc.model.build_model``);
    tests pass small stand-ins. ``log``: a function taking one line of text (default: tqdm.write).
    """

    def __init__(self, config: TrainConfig, run_dir, resume: bool = False,
                 build_model: Callable | None = None, log: Callable[[str], None] | None = None, device=None):
        from ..devices import resolve_device

        #: where the model and the batches live ("cpu" default; devices.resolve_device: DeviceError without CUDA)
        self.device = resolve_device(device)
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        if build_model is None:
            from ..model import build_model, default_config
            default_config(**config.model)  # misspelled [model] keys fail here, before data loading
        self.build_model = build_model
        self._log_fn = log
        self.loss_fn = WeightedLoss(config.loss)
        # validation sees every structure: a model that closes more gaps must not look better
        self.val_loss_fn = WeightedLoss({**config.loss, "gap_gate": 0.0})
        self.dtype = config.run.dtype

    # -- logging ---------------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        if self._log_fn is not None:
            self._log_fn(line)
        else:
            from tqdm import tqdm
            tqdm.write(line)
        with open(self.run_dir / "train.log", "a") as f:
            f.write(line + "\n")

    # -- setup -----------------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> dict | None:
        """Create or check the run directory; returns the checkpoint when resuming."""
        ckpt_path = self.run_dir / "checkpoint.pt"
        if self.resume:
            if not ckpt_path.is_file():
                raise TrainingError(f"--resume: no checkpoint in {self.run_dir}")
            saved = load_config(self.run_dir / "config.toml")
            diffs = [d for d in config_differences(as_plain(saved.to_dict()), as_plain(self.config.to_dict()))
                     if not any(d == f"run.{k}" for k in RUN_OVERRIDABLE)]
            if diffs:
                raise TrainingError(f"the config differs from the run's config.toml in {', '.join(diffs)}; "
                                    f"on resume only run.{{{','.join(RUN_OVERRIDABLE)}}} may change")
            self._remove_stale_temporaries()
            return load_checkpoint(ckpt_path)
        if ckpt_path.exists():
            raise TrainingError(f"{self.run_dir} already holds a training run: pass --resume, or another "
                                "--out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        (self.run_dir / "config.toml").write_text(self.config.source or _dump_toml(self.config.to_dict()))
        return None

    def _remove_stale_temporaries(self) -> None:
        for name in remove_stale_temporaries(self.run_dir):
            self.log(f"removed {name}: a write interrupted when its process was killed")

    def _load_data(self) -> None:
        load_data(self)

    def _build(self, checkpoint: dict | None) -> None:
        run = self.config.run
        self.model_config = (checkpoint["model_config"] if checkpoint is not None
                             else model_config_for(self.config, self.tables))
        torch.manual_seed(run.seed)
        self.model = self.build_model(dict(self.model_config)).to(self.dtype).to(self.device)
        # the resolved config (every key, defaults filled in) is what rebuilds this architecture
        self.model_config = as_plain(dict(getattr(self.model, "config", self.model_config)))
        # how the model computes its energy, and what run.trainable trains on it (energy_paths/)
        from ..energy_paths import energy_path_for

        self.energy_path = energy_path_for(self.model_config)
        self.phase = self.energy_path.phase(run.trainable, self.loss_fn.weights)
        self.model.train()
        self._steps = (CompiledSteps(self.model, run.batch_size, self._forward_loss, self.log) if run.compile
                       else None)      # run.compile: steps through torch.compile where checked (compiled_step.py)
        self._time_at_start, self._t_start = 0.0, time.monotonic()     # the loop's clock (set again by _loop)
        loaded_norm = False
        if checkpoint is None and run.init_weights:
            loaded_norm = load_initial_weights(self, self.config.resolve_path(run.init_weights))
        elif checkpoint is None and hasattr(self.model, "set_mean_block"):
            with _one_thread():  # LAPACK least squares differs in the last bit between runs otherwise
                for z, block in mean_atom_blocks(self.tables, self.rows["train"]).items():
                    self.model.set_mean_block(z, block)
        if (checkpoint is None and "energy" in self.loss_fn.weights
                and hasattr(self.model, "element_energy_offsets")
                and not bool(self.model.element_energy_offsets.detach().abs().sum() > 0)):
            elements = self.model_config["elements"]
            with _one_thread():
                e0 = self.energy_path.initial_energy_offsets(self.tables, self.rows["train"], elements)
            with torch.no_grad():
                self.model.element_energy_offsets.copy_(e0)
            self.log("per-element energy offsets from the reference energies: "
                     + ", ".join(f"Z={z}: {float(v):.6f} Ha" for z, v in zip(elements, e0)))
        if checkpoint is None:
            self.energy_path.prepare_fresh_model(self, loaded_norm)   # the readout's input standardization
        if checkpoint is None and run.init_weights and run.refit_energy_offsets:
            shift_energy_offsets(self)
        # the phase's weights learn, the others are frozen
        n = self.phase.freeze(self.model)
        if self.phase.description:
            self.log(self.phase.description.format(n=n))
        self._trunk_cache = FrozenTrunkInvariants.for_phase(     # frozen_trunk.py
            self.model, self.tables, self.energy_path, self.phase, self.loss_fn.needs_positions_grad,
            run.frozen_trunk_cache_mb, self.log)
        if self.phase.prepare is not None:
            self.phase.prepare(self, checkpoint is None)
        self.ema = None
        if self.config.optimizer.ema_decay > 0:
            shadow = self.build_model(dict(self.model_config)).to(self.dtype).to(self.device)
            self.ema = ExponentialMovingAverage(self.model, shadow, self.config.optimizer.ema_decay)
        opt = self.config.optimizer
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, opt.lr, opt.lr_by_prefix), lr=opt.lr,
                                           betas=opt.betas, weight_decay=opt.weight_decay)
        sch = self.config.scheduler
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=sch.factor, patience=sch.patience, threshold=sch.threshold,
            min_lr=sch.min_lr)
        self.data_order = torch.Generator().manual_seed(run.seed + 1)
        self.progress = {"epoch": 0, "step": 0, "batch_in_epoch": 0, "epoch_loss_sum": 0.0,
                         "epoch_structures": 0, "epoch_train_s": 0.0, "epoch_wall_s": 0.0,
                         "train_time_s": 0.0, "best_val_loss": math.inf, "best_epoch": -1,
                         "pending_validation": False, "epoch_start_order": self.data_order.get_state(),
                         "converged": False}
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"])
            if self.ema is not None:
                self.ema.load_state_dict(checkpoint["ema"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            self.scheduler.load_state_dict(checkpoint["scheduler"])
            self.progress.update(checkpoint["progress"])
            _set_rng_state(checkpoint["rng"], self.data_order)
        n_params = sum(p.numel() for p in self.model.parameters())
        self.log(f"model: {n_params} parameters, {self.config.run.precision}; "
                 f"train {self.n_train} / val {self.n_val} structures in {len(self.tables)} dataset(s)")

    def _checkpoint_state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(self.data_order),
            "progress": dict(self.progress),
            "config": as_plain(self.config.to_dict()),
            "model_config": as_plain(self.model_config),
            "dtype": self.config.run.precision,
        }

    def save(self) -> None:
        self._ckpt_s = save_checkpoint(self.run_dir / "checkpoint.pt", self._checkpoint_state())
        self._last_ckpt = time.monotonic()

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    # -- steps -----------------------------------------------------------------------------------------
    def _forward_loss(self, model, batch, loss_fn=None):
        loss_fn = loss_fn or self.loss_fn
        batch = batch.to(self.device)
        if loss_fn.needs_positions_grad:
            batch.positions_bohr.requires_grad_(True)
        # phases whose steps do not need F (a readout without F terms, the correction on a frozen
        # Hamiltonian) run the energy part alone
        kw = {"energy_only": True} if self.phase.energy_only else {}
        if self._trunk_cache is not None and (invariants := self._trunk_cache(batch)) is not None:
            kw["fock_invariants"] = invariants
        out = model(batch.numbers, batch.positions_bohr, batch.batch, **kw)
        loss, parts = loss_fn(out, batch)
        return out, loss, parts

    def train_step(self, batch) -> float:
        """One optimizer step on ``batch``; returns the loss (nan if the step was skipped)."""
        self.model.train()
        module = self._steps.module_for(batch, self.loss_fn.needs_positions_grad) if self._steps else self.model
        _, loss, _ = self._forward_loss(module, batch)
        self.optimizer.zero_grad(set_to_none=True)
        if not loss.requires_grad:  # every term masked (e.g. all structures gated out of energy/forces)
            return math.nan
        if not torch.isfinite(loss):
            self._bad_steps += 1
            if self._bad_steps >= 20:
                raise TrainingError("20 steps in a row with a non-finite loss: lower optimizer.lr or "
                                    "check the data")
            return math.nan
        # gradients of the trainable weights only: the positions also require grad (force loss), and
        # their gradient would cost a second pass through every frozen part of the network
        loss.backward(inputs=[p for p in self.model.parameters() if p.requires_grad])
        clip = self.config.optimizer.grad_clip
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        set_scheduled_lrs(self.optimizer, self.progress["step"], self.config.optimizer.warmup_steps,
                          self.config.scheduler, self._time_at_start + (time.monotonic() - self._t_start))
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self._bad_steps = 0
        return float(loss.detach())

    def validate(self) -> dict:
        """Validation loss and errors of the EMA model (float64 metrics)."""
        t0 = time.perf_counter()
        model = self.eval_model
        was_training = model.training
        model.eval()
        loss_sum, n = 0.0, 0
        f_err, eps_err = [], []
        sq = {"energy": 0.0, "forces": 0.0}
        with torch.set_grad_enabled(self.loss_fn.needs_positions_grad):
            for t, rows in epoch_plan(self.rows["val"], self.config.run.batch_size, None):
                table = self.tables[t]
                batch = table.batch(rows, dtype=self.dtype, table=t)
                out, loss, parts = self._forward_loss(model, batch, self.val_loss_fn)
                loss_sum += float(loss.detach()) * batch.n_structures
                n += batch.n_structures
                for key in sq:
                    sq[key] += parts.get(key, math.nan) * batch.n_structures
                if self.phase.energy_only:
                    continue
                with torch.no_grad():
                    pred = predicted_fock(out)
                    pred = ([p.detach().cpu() for p in pred] if isinstance(pred, (list, tuple))
                            else pred.detach().cpu())
                    idx = torch.as_tensor(rows)
                    f_err.append(fock_errors(pred, table.fock[idx], table.ao_atom)["fock_mae"])
                    eps_err.append(orbital_errors(pred, table.fock[idx], table.overlap[idx],
                                                  table.n_occ)["eps_occ_mae"])
        model.train(was_training)
        self._val_s = time.perf_counter() - t0
        # root-mean-square energy (per structure) and force-component errors, from the mean squared terms
        rms = {"val_energy_rmse_mev": math.sqrt(sq["energy"] / n) * HARTREE * 1e3,
               "val_force_rmse_mev_a": math.sqrt(sq["forces"] / n) * HARTREE / BOHR * 1e3}
        if self.phase.energy_only:   # F is not computed: its errors are the phase's (frozen, or NaN)
            return {"val_loss": loss_sum / n, **self.phase.fock_metrics(self), **rms}
        return {"val_loss": loss_sum / n, "val_fock_mae_uha": float(torch.cat(f_err).mean()) * UHA,
                "val_eps_mae_uha": float(torch.cat(eps_err).mean()) * UHA, **rms}

    # -- the loop --------------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        threads = self.config.run.threads
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with _run_dir_lock(self.run_dir), _isolated_global_state(threads, self.config.run.deterministic), \
                _StopSignals() as signals:
            checkpoint = self._prepare_run_dir()
            self._load_data()
            self._build(checkpoint)
            if self.phase.before_loop is not None:
                self.phase.before_loop(self)    # the frozen Hamiltonian's energies (atom_correction)
            del checkpoint
            return self._loop(signals)

    def _time_left(self) -> float:
        budget = self.config.run.max_time_min * 60.0
        return math.inf if budget <= 0 else budget - (time.monotonic() - self._t_start)

    def _loop(self, signals: _StopSignals) -> TrainResult:
        from tqdm import tqdm

        run, p = self.config.run, self.progress
        self._t_start = self._last_ckpt = self._last_growth = time.monotonic()
        self._val_s, self._ckpt_s, self._bad_steps, self._last_plot = 0.0, 1.0, 0, -math.inf
        self._time_at_start = p["train_time_s"]
        truncate_csv(self.run_dir / "metrics.csv", p["epoch"])
        steps_per_epoch = len(epoch_plan(self.rows["train"], run.batch_size, None))
        total = run.max_epochs * steps_per_epoch
        if run.max_steps > 0:
            total = min(total, run.max_steps)
        bar = tqdm(total=total, initial=min(p["step"], total), unit="step", dynamic_ncols=True,
                   disable=not run.progress, mininterval=1.0, desc="train")
        structures, train_s, cpu_s, t_step = 0, 0.0, 0.0, 0.0
        last_val: dict = {}
        stopped = None

        def stop_reason(before_step: bool) -> str | None:
            if signals.signum is not None:
                return "signal"
            if run.max_steps > 0 and p["step"] >= run.max_steps:
                return "max_steps"
            if p["converged"]:
                return "converged"
            val_s = self._val_s
            if val_s == 0.0 and structures:  # no validation timed yet: guess a training step's cost
                val_s = self.n_val * train_s / structures
            need = self._ckpt_s * 1.5 + 1.0 + 1.5 * (t_step if before_step else val_s)
            if self._time_left() < need:
                return "max_time"
            return None

        try:
            while stopped is None:
                if p["pending_validation"]:
                    if (stopped := stop_reason(before_step=False)) is not None:
                        break
                    last_val = self._end_epoch(bar)
                    self._grow_train()
                    continue
                if p["epoch"] >= run.max_epochs:
                    stopped = "max_epochs"
                    break
                # the epoch's batches, from the generator state at its start
                self.data_order.set_state(p["epoch_start_order"])
                plan = epoch_plan(self.rows["train"], run.batch_size, self.data_order)
                for t, rows in plan[p["batch_in_epoch"]:]:
                    if (stopped := stop_reason(before_step=True)) is not None:
                        break
                    t0, c0 = time.perf_counter(), time.process_time()
                    batch = self.tables[t].batch(rows, dtype=self.dtype, table=t)
                    loss = self.train_step(batch)
                    t_step = time.perf_counter() - t0
                    train_s += t_step
                    cpu_s += time.process_time() - c0
                    structures += batch.n_structures
                    p["step"] += 1
                    p["batch_in_epoch"] += 1
                    if math.isfinite(loss):
                        p["epoch_loss_sum"] += loss * batch.n_structures
                        p["epoch_structures"] += batch.n_structures
                    p["epoch_train_s"] += t_step
                    bar.update(1)
                    bar.set_postfix_str(self._postfix(loss, last_val), refresh=False)
                    if (time.monotonic() - self._last_ckpt) >= run.checkpoint_every_min * 60.0:
                        self._account_time()
                        self.save()
                if stopped is not None:
                    break
                # epoch complete: the next epoch starts from the generator's current state
                p["epoch"] += 1
                p["batch_in_epoch"] = 0
                p["epoch_start_order"] = self.data_order.get_state()
                p["pending_validation"] = True
        finally:
            # on an exception (a second Ctrl-C, a diverged loss) the last periodic checkpoint stays:
            # the state in memory may be half-way through a step
            bar.close()
        self._account_time()
        self.save()
        self._plot(force=True)
        rate = structures / train_s if train_s > 0 else 0.0
        cpu_rate = structures / cpu_s if cpu_s > 0 else 0.0
        self.log(f"stopped ({stopped}) after {p['epoch']} epochs, {p['step']} steps; training steps ran at "
                 f"{rate:.1f} structures/s ({cpu_rate:.1f} per CPU-second); total training time "
                 f"{_hms(p['train_time_s'])}; checkpoint {self.run_dir / 'checkpoint.pt'}")
        return TrainResult(run_dir=str(self.run_dir), epochs=p["epoch"], steps=p["step"], stopped=stopped,
                           train_time_s=p["train_time_s"], best_val_loss=p["best_val_loss"],
                           best_epoch=p["best_epoch"], structures_per_s=rate, last_validation=last_val,
                           signum=signals.signum)

    def _grow_train(self) -> None:
        """``run.grow_train_every_min``: frames labelled since the split was made join the training split."""
        every = self.config.run.grow_train_every_min
        if every <= 0 or time.monotonic() - self._last_growth < 60.0 * every:
            return
        self._last_growth = time.monotonic()
        n = grow_train(self)
        if n:
            self.log(f"{n} frames labelled since the split joined the training split: {self.n_train} train "
                     f"structures")
            self._account_time()
            self.save()

    def _account_time(self) -> None:
        """progress["train_time_s"]: earlier invocations plus the wall time of this one so far."""
        self.progress["train_time_s"] = self._time_at_start + (time.monotonic() - self._t_start)

    def _postfix(self, loss: float, last_val: dict) -> str:
        p, run = self.progress, self.config.run
        parts = [f"epoch {p['epoch'] + 1}/{run.max_epochs}", f"loss {loss:.3e}"]
        if last_val:
            parts.append(f"val F {last_val['val_fock_mae_uha']:.1f} uHa")
        left = self._time_left()
        if math.isfinite(left):
            parts.append(f"time left {_hms(max(left, 0.0))}")
        return ", ".join(parts)

    def _end_epoch(self, bar) -> dict:
        """Validation, scheduler, CSV row, best weights, plot for the epoch just completed."""
        p = self.progress
        t0 = time.perf_counter()
        val = self.validate()
        if self.config.scheduler.kind == "plateau":
            floor = plateau_step(self.scheduler, self.optimizer, val["val_loss"], self.config.scheduler.min_lr)
            if self.config.run.stop_on_plateau and floor:
                p["converged"] = True
                self.log(f"run.stop_on_plateau: the lr is at its floor and {self.scheduler.patience} more epochs "
                         "brought no better validation loss: stopping")
        if val["val_loss"] < p["best_val_loss"]:
            p["best_val_loss"], p["best_epoch"] = val["val_loss"], p["epoch"]
            save_checkpoint(self.run_dir / "best.pt", {
                "format": CHECKPOINT_FORMAT + "/best", "model": self.eval_model.state_dict(),
                "model_config": as_plain(self.model_config), "epoch": p["epoch"], "step": p["step"],
                "dtype": self.config.run.precision, **val})
        p["epoch_wall_s"] += time.perf_counter() - t0
        train_loss = p["epoch_loss_sum"] / max(p["epoch_structures"], 1)
        rate = p["epoch_structures"] / p["epoch_train_s"] if p["epoch_train_s"] > 0 else 0.0
        self._account_time()
        row = {"epoch": p["epoch"], "step": p["step"], "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": train_loss, **val, "wall_time_s": p["train_time_s"],
               "epoch_time_s": p["epoch_train_s"] + p["epoch_wall_s"], "structures_per_s": rate}
        append_csv(self.run_dir / "metrics.csv", row)
        self.log(f"epoch {p['epoch']:4d} step {p['step']:7d} lr {row['lr']:.2e} loss {train_loss:.3e} "
                 f"val loss {val['val_loss']:.3e} F MAE {val['val_fock_mae_uha']:9.1f} uHa "
                 f"eps MAE {val['val_eps_mae_uha']:9.1f} uHa E RMSE {val['val_energy_rmse_mev']:8.2f} meV "
                 f"F RMSE {val['val_force_rmse_mev_a']:8.1f} meV/A | {rate:6.1f} structures/s | "
                 f"{_hms(p['train_time_s'])}")
        p.update(epoch_loss_sum=0.0, epoch_structures=0, epoch_train_s=0.0, epoch_wall_s=0.0,
                 pending_validation=False)
        self._plot()
        return val

    # -- outputs ---------------------------------------------------------------------------------------
    def _plot(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_plot < 30.0:
            return
        self._last_plot = time.monotonic()
        plot_learning_curve(self.run_dir / "metrics.csv", self.run_dir / "learning_curve.png")   # matplotlib: core
