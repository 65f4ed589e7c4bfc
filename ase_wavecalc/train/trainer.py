"""The training loop: AdamW + ReduceLROnPlateau + EMA, checkpoints that resume bit for bit.

Run directory (``Trainer.run_dir``):

| file | content |
|---|---|
| config.toml | the training config, verbatim |
| split.json | per dataset: path, sha256, counts and the train/val/test frame ids; the split seed |
| checkpoint.pt | latest full state (weights-only torch file, see ``CHECKPOINT_KEYS``) |
| best.pt | EMA weights of the epoch with the lowest validation loss |
| metrics.csv | one row per epoch (``CSV_COLUMNS``) |
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
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .config import RUN_OVERRIDABLE, TrainConfig, TrainingError, as_plain, config_differences, load_config
from .stages import (ENERGY_CORRECTION_PREFIXES, adapt_readout_heads, freeze_all_but_energy_correction,
                     freeze_all_but_energy_readout, freeze_all_but_transfer_head, freeze_hamiltonian,
                     parameter_groups)
from .data import FrameTable, epoch_plan, load_table, split_frames
from .losses import WeightedLoss, predicted_fock
from .metrics import UHA, fock_errors, orbital_errors
from ..units import BOHR, HARTREE

__all__ = ["Trainer", "TrainResult", "ExponentialMovingAverage", "load_checkpoint", "save_checkpoint",
           "CSV_COLUMNS", "CHECKPOINT_FORMAT", "model_config_for"]

CHECKPOINT_FORMAT = "ase_wavecalc.train.checkpoint/2"
# /1: weights for the SO(2) path basis LAPACK happened to return (machine- and thread-dependent); /2: the
# canonical basis (model file format 2). /1 checkpoints are refused: their weights would be misread.
_LEGACY_CHECKPOINT_FORMAT = "ase_wavecalc.train.checkpoint/1"


def _check_format(path, state, expected: str) -> None:
    found = state.get("format") if isinstance(state, dict) else None
    if found is not None and str(found).startswith(_LEGACY_CHECKPOINT_FORMAT):
        raise TrainingError(f"{path} was written before the canonical SO(2) path basis (checkpoint format 1): "
                            "its weights belong to a machine-dependent basis and would be misread; it "
                            "cannot be resumed or used as init_weights")
    if found != expected:
        raise TrainingError(f"{path} is not an ase-wavecalc training checkpoint ({expected})")


def load_best(path) -> dict:
    """Read a run's best.pt (EMA weights of the best validation epoch; ``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    _check_format(path, state, CHECKPOINT_FORMAT + "/best")
    return state
CHECKPOINT_KEYS = ("format", "model", "ema", "optimizer", "scheduler", "rng", "progress", "config",
                   "model_config", "dtype")
CSV_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_fock_mae_uha", "val_eps_mae_uha",
               "val_energy_rmse_mev", "val_force_rmse_mev_a", "wall_time_s", "epoch_time_s", "structures_per_s")





# ----------------------------------------------------------------------------------------------------
# EMA


class ExponentialMovingAverage:
    """Shadow weights ``ema <- d ema + (1 - d) w`` after every optimizer step.

    ``d = min(decay, (1 + n) / (10 + n))`` after n updates: a short warm-up so that the average of the
    first steps does not drag the random initialization along. Buffers are copied, not averaged.
    ``module`` is a second instance of the model that holds the averaged weights (for validation,
    checkpoints and export).
    """

    def __init__(self, model: torch.nn.Module, shadow: torch.nn.Module, decay: float):
        self.decay = float(decay)
        self.module = shadow
        self.module.load_state_dict(model.state_dict())
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for e, p in zip(self.module.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])


# ----------------------------------------------------------------------------------------------------
# checkpoints and global state


def _rng_state(data_order: torch.Generator) -> dict:
    np_state = np.random.get_state(legacy=False)
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
        "data_order": data_order.get_state(),
    }


def _set_rng_state(state: dict, data_order: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    data_order.set_state(state["data_order"])


def save_checkpoint(path, state: dict) -> float:
    """Atomically write ``state`` (tensors and plain types only) with torch.save; returns seconds taken."""
    t0 = time.perf_counter()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return time.perf_counter() - t0


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by the trainer (``weights_only=True``: never executes code)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    _check_format(path, state, CHECKPOINT_FORMAT)
    return state


@contextlib.contextmanager
def _isolated_global_state(threads: int, deterministic: bool):
    """Run with private RNG states, thread count and deterministic-algorithms flag; the caller's are
    restored afterwards."""
    np_state, py_state, n_threads = np.random.get_state(), random.getstate(), torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        try:
            if threads > 0:
                torch.set_num_threads(threads)
            if deterministic:
                torch.use_deterministic_algorithms(True)
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=det_warn)
            torch.set_num_threads(n_threads)
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextlib.contextmanager
def _one_thread():
    """Single-threaded torch for a block: multi-threaded LAPACK (lstsq, pinv) on CPU is not bitwise
    reproducible, and the initialization must be for runs to be repeatable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _StopSignals:
    """SIGINT/SIGTERM set ``self.signum`` (the loop then stops cleanly); a second SIGINT interrupts."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path):
    """Exclusive lock on the run directory (released when the process dies)."""
    import fcntl

    f = open(run_dir / ".lock", "w")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"{run_dir} is in use by another training process") from None
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()


# ----------------------------------------------------------------------------------------------------
# the trainer


@dataclass
class TrainResult:
    run_dir: str
    epochs: int
    steps: int
    stopped: str                 # "max_epochs", "max_steps", "max_time", "signal"
    train_time_s: float          # summed over all invocations of this run
    best_val_loss: float
    best_epoch: int
    structures_per_s: float      # training steps only, this invocation
    last_validation: dict = field(default_factory=dict)
    signum: int | None = None


def model_config_for(config: TrainConfig, tables) -> dict:
    """The config handed to ``build_model``: ``[model]`` plus basis and elements from the datasets."""
    cfg = dict(config.model)
    bases = {t.basis.lower() for t in tables}
    if len(bases) != 1:
        raise TrainingError(f"the datasets use different basis sets: {sorted(bases)}")
    basis = tables[0].basis
    if "basis" in cfg and str(cfg["basis"]).lower() != basis.lower():
        raise TrainingError(f"[model] basis = {cfg['basis']!r} but the datasets are in {basis!r}")
    cfg.setdefault("basis", basis)
    elements = sorted({int(z) for t in tables for z in t.numbers})
    if "elements" in cfg:
        missing = sorted(set(elements) - {int(z) for z in cfg["elements"]})
        if missing:
            raise TrainingError(f"[model] elements lacks {missing}, present in the datasets")
    else:
        cfg["elements"] = elements
    return cfg


def mean_atom_blocks(tables, row_sets) -> dict[int, torch.Tensor]:
    """Mean on-site block of F per element over the training frames (Hartree, PySCF order).

    The network's on-site biases start from these (``model.set_mean_block``), so training begins near
    the right scale (core levels of O reach -20 Hartree) instead of at zero.
    """
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for table, rows in zip(tables, row_sets):
        if len(rows) == 0:
            continue
        from ..basis import BasisLayout
        z = [int(v) for v in table.numbers]
        slices = BasisLayout(table.basis, sorted(set(z))).ao_slices(z)
        fock = table.fock[torch.as_tensor(rows)]
        for za, sl in zip(z, slices):
            block = fock[:, sl, sl].sum(0)
            sums[za] = sums[za] + block if za in sums else block
            counts[za] = counts.get(za, 0) + len(rows)
    return {za: sums[za] / counts[za] for za in sorted(sums)}


def initial_weights(path) -> dict:
    """A state dict to start from: a run directory (EMA weights of best.pt, else of checkpoint.pt) or
    an exported model directory (weights.safetensors). Read without executing code."""
    path = Path(path)
    if (path / "checkpoint.pt").is_file():
        if (path / "best.pt").is_file():
            return load_best(path / "best.pt")["model"]
        ckpt = load_checkpoint(path / "checkpoint.pt")
        return ckpt["ema"]["module"] if ckpt.get("ema") is not None else ckpt["model"]
    if (path / "weights.safetensors").is_file():
        from safetensors.torch import load_file

        from ..model.io import ModelFileError, _read_card
        try:
            _read_card(path)   # refuses model files of another format (e.g. the old SO(2) path basis)
        except ModelFileError as exc:
            raise TrainingError(f"run.init_weights {path}: {exc}") from None
        return load_file(str(path / "weights.safetensors"))
    raise TrainingError(f"run.init_weights: {path} is neither a run directory (checkpoint.pt) nor a model "
                        "directory (weights.safetensors)")


def reference_atom_energies(tables, row_sets, elements, hamiltonian: bool = True) -> torch.Tensor:
    """Per-element offsets e0 (Hartree, in the order of ``elements``) that make the energy functional
    E = E_nn + 1/2 Tr[P (F + h_core)] + sum_A e0[Z_A], evaluated with the *reference* F, reproduce the
    reference energies in the least-squares sense (minimum norm when compositions do not determine
    every element). For DFT these offsets absorb most of the exchange-correlation double counting,
    so an energy loss starts near the right scale. Needs ``e_tot`` and ``hcore`` in the tables.
    ``hamiltonian=False`` (energy_path "readout", E = sum_A e0[Z_A] + learned part): e0 fits e_tot itself.
    """
    from ..electronic import solve_fock
    from ..integrals import nuclear_repulsion

    counts, residuals = [], []
    col = {int(z): k for k, z in enumerate(elements)}
    for table, rows in zip(tables, row_sets):
        if len(rows) == 0:
            continue
        idx = torch.as_tensor(rows)
        if hamiltonian:
            fock, overlap = table.fock[idx], table.overlap[idx]
            _, c = solve_fock(fock, overlap)
            c_occ = c[..., :table.n_occ]
            dm = 2.0 * c_occ @ c_occ.transpose(-1, -2)
            e_elec = 0.5 * (dm * (fock + table.extra["hcore"][idx])).sum(dim=(-2, -1))
            e_nuc = torch.stack([nuclear_repulsion(table.numbers, r) for r in table.positions_bohr[idx]])
            residuals.append(table.extra["e_tot"][idx] - e_nuc - e_elec)
        else:
            residuals.append(table.extra["e_tot"][idx].to(torch.float64))
        n = torch.zeros(len(elements), dtype=torch.float64)
        for z in table.numbers.tolist():
            n[col[int(z)]] += 1
        counts.append(n.expand(len(rows), -1))
    a, b = torch.cat(counts), torch.cat(residuals)
    return torch.linalg.pinv(a) @ b


def held_out_split(table, spec, source, seed: int) -> dict[str, list[int]]:
    """Split whose test frames are the frames of ``table`` that ``source`` (a model directory with
    model.json, or a run directory with split.json) held out as test frames of the same dataset file
    (matched by file name); train and val are drawn (``seed``) from the other frames. Used when a model
    is trained further on another level of theory: its test frames stay untouched by every stage."""
    source = Path(source)
    if (source / "model.json").is_file():
        entries = json.loads((source / "model.json").read_text())["split"]["datasets"]
    elif (source / "split.json").is_file():
        entries = json.loads((source / "split.json").read_text())["datasets"]
    else:
        raise TrainingError(f"test_frames_from = {str(source)!r}: neither a model (model.json) nor a run "
                            "directory (split.json)")
    name = Path(table.path).name
    match = [e for e in entries if Path(e.get("name") or e.get("path", "")).name == name]
    if not match:
        raise TrainingError(f"test_frames_from = {str(source)!r} has no split of {name}")
    held = set(int(f) for f in match[0]["test_frames" if "test_frames" in match[0] else "test"])
    test = sorted(int(f) for f in table.frame if int(f) in held)
    if spec.test:
        test = sorted(np.random.default_rng(seed).choice(test, size=min(spec.test, len(test)), replace=False).tolist())
    rest = [int(f) for f in table.frame if int(f) not in held]
    ids = split_frames(rest, spec.train, spec.val, 0, seed)
    ids["test"] = [int(f) for f in test]
    return ids


class Trainer:
    """Train a Hamiltonian model as configured; ``fit()`` runs until a stop criterion.

    ``build_model``: the builder ``config dict -> nn.Module`` (default ``ase_wavecalc.model.build_model``);
    tests pass small stand-ins. ``log``: a function taking one line of text (default: tqdm.write).
    """

    def __init__(self, config: TrainConfig, run_dir, resume: bool = False,
                 build_model: Callable | None = None, log: Callable[[str], None] | None = None):
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
            return load_checkpoint(ckpt_path)
        if ckpt_path.exists():
            raise TrainingError(f"{self.run_dir} already holds a training run: pass --resume, or another "
                                "--out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.toml").write_text(self.config.source or _dump_toml(self.config.to_dict()))
        return None

    def _load_data(self) -> None:
        keys = self.loss_fn.dataset_keys
        self.tables: list[FrameTable] = []
        split_path = self.run_dir / "split.json"
        saved_split = json.loads(split_path.read_text()) if self.resume and split_path.is_file() else None
        split_info = {"seed": self.config.data.seed, "datasets": []}
        self.rows = {"train": [], "val": [], "test": []}
        for i, spec in enumerate(self.config.data.datasets):
            path = self.config.resolve_path(spec.path)
            table = load_table(path, keys=keys, labels=spec.labels)
            if saved_split is not None:
                entry = saved_split["datasets"][i]
                if entry["sha256"] != table.sha256:
                    self.log(f"warning: {path} changed since the split was made (sha256 differs); "
                             "keeping the saved frame ids")
                ids = {k: entry[k] for k in ("train", "val", "test")}
            else:
                held = {}
                if spec.test_frames_from:
                    ids = held_out_split(table, spec, self.config.resolve_path(spec.test_frames_from),
                                         self.config.data.seed)
                    held = {"test_frames_from": str(spec.test_frames_from)}
                else:
                    ids = split_frames(table.frame, spec.train, spec.val, spec.test, self.config.data.seed)
                entry = {"path": str(spec.path), "resolved_path": str(path), "sha256": table.sha256,
                         "n_frames": table.n_frames, "formula": _formula(table.numbers),
                         "counts": {"train": spec.train, "val": spec.val, "test": len(ids["test"])},
                         "labels": spec.labels, **held, **ids}
            split_info["datasets"].append(entry)
            for k in self.rows:
                self.rows[k].append(table.rows_of_frames(ids[k]))
            self.tables.append(table)
        if saved_split is None:
            _atomic_write_text(split_path, json.dumps(split_info, indent=1))
        self.n_train = sum(len(r) for r in self.rows["train"])
        self.n_val = sum(len(r) for r in self.rows["val"])
        if self.n_val == 0:
            raise TrainingError("the validation split is empty: set val > 0 for at least one dataset")

    def _build(self, checkpoint: dict | None) -> None:
        run = self.config.run
        self.model_config = (checkpoint["model_config"] if checkpoint is not None
                             else model_config_for(self.config, self.tables))
        torch.manual_seed(run.seed)
        self.model = self.build_model(dict(self.model_config)).to(self.dtype)
        # the resolved config (every key, defaults filled in) is what rebuilds this architecture
        self.model_config = as_plain(dict(getattr(self.model, "config", self.model_config)))
        self.model.train()
        loaded_norm = False
        if checkpoint is None and run.init_weights:
            path = self.config.resolve_path(run.init_weights)
            state = initial_weights(path)
            own = self.model.state_dict()
            # an energy correction of another shape (or reading other features: the trunk is new) in the
            # earlier weights is left out as a whole, so the new one starts from its initialization (zero)
            state = adapt_readout_heads(state, self.model.state_dict())
            if (self.model_config.get("energy_path") == "readout" and "atom_energy_offsets" in state
                    and not any(k.startswith("readout_mlp.") for k in state)):
                # e0 of a Hamiltonian-path model absorbs 1/2 Tr[P (F + h)]: meaningless for a readout energy,
                # so it is refitted from the reference energies below
                state["atom_energy_offsets"] = torch.zeros_like(state["atom_energy_offsets"])
            corr = [k for k in state if k.startswith(ENERGY_CORRECTION_PREFIXES)]
            new_trunk = any(k.startswith("energy_interactions.") for k in own) and not any(
                k.startswith("energy_interactions.") for k in state)
            if self.model_config.get("energy_path") == "readout" and not new_trunk:
                # a readout model keeps an energy trunk of the same shape (trained as a correction, its
                # features describe the energy) and starts its readout MLP afresh
                state = {k: v for k, v in state.items()
                         if k not in corr or (k in own and own[k].shape == state[k].shape)}
            elif new_trunk or any(k not in own or own[k].shape != state[k].shape for k in corr):
                state = {k: v for k, v in state.items() if k not in corr}
            try:
                missing, unexpected = self.model.load_state_dict(state, strict=False)
            except RuntimeError as exc:
                raise TrainingError(f"run.init_weights {path}: the weights do not fit the [model] "
                                    f"architecture: {str(exc).splitlines()[0]}") from None
            # only parts that a later stage adds (the per-atom energy correction) may be missing
            bad = list(unexpected) + [k for k in missing if not k.startswith(ENERGY_CORRECTION_PREFIXES)]
            if bad:
                raise TrainingError(f"run.init_weights {path}: the weights do not fit the [model] "
                                    f"architecture: {'unexpected' if unexpected else 'missing'} {bad[:4]}")
            loaded_norm = any(k.startswith("readout_norm.") for k in state)
            self.log(f"initial weights from {path}"
                     + (f"; new, freshly initialized: {len(missing)} tensors of the per-atom energy "
                        "correction" if missing else ""))
        elif checkpoint is None and hasattr(self.model, "set_mean_block"):
            with _one_thread():  # LAPACK least squares differs in the last bit between runs otherwise
                for z, block in mean_atom_blocks(self.tables, self.rows["train"]).items():
                    self.model.set_mean_block(z, block)
        if (checkpoint is None and "energy" in self.loss_fn.weights
                and hasattr(self.model, "atom_energy_offsets")
                and not bool(self.model.atom_energy_offsets.detach().abs().sum() > 0)):
            elements = self.model_config["elements"]
            with _one_thread():
                e0 = reference_atom_energies(self.tables, self.rows["train"], elements,
                                             hamiltonian=self.model_config.get("energy_path") != "readout")
            with torch.no_grad():
                self.model.atom_energy_offsets.copy_(e0)
            self.log("per-element energy offsets from the reference energies: "
                     + ", ".join(f"Z={z}: {float(v):.6f} Ha" for z, v in zip(elements, e0)))
        if checkpoint is None and getattr(self.model, "readout_norm", None) is not None and not loaded_norm:
            self._standardize_readout()   # (a readout trained before keeps the statistics it learned with)
        if checkpoint is None and run.init_weights and run.refit_energy_offsets:
            self._shift_energy_offsets()
        if run.trainable == "energy_head":
            n = freeze_hamiltonian(self.model)
            self.log(f"training the energy head only ({n} parameters); the Hamiltonian (F) is frozen")
        elif run.trainable == "energy_readout":
            n = freeze_all_but_energy_readout(self.model)
            self.log(f"training the energy readout only ({n} parameters: e0, the readout MLP and the energy "
                     "trunk); F is frozen")
        elif run.trainable == "transfer_head":
            n = freeze_all_but_transfer_head(self.model)
            self.log(f"training the linear transfer head only ({n} parameters); the network is frozen")
            if checkpoint is None:
                from .transfer import fit_transfer_head
                with _one_thread():
                    self.transfer_fit = fit_transfer_head(self.model, self.tables, self.rows["train"],
                                                          self.rows["val"], alpha=run.transfer_alpha, log=self.log)
                _atomic_write_text(self.run_dir / "transfer_fit.json", json.dumps(self.transfer_fit, indent=1))
        elif run.trainable == "energy_correction":
            n = freeze_all_but_energy_correction(self.model)
            self.log(f"training the energy correction only ({n} parameters); F and the core correction "
                     "are frozen")
        self.ema = None
        if self.config.optimizer.ema_decay > 0:
            shadow = self.build_model(dict(self.model_config)).to(self.dtype)
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
                         "pending_validation": False, "epoch_start_order": self.data_order.get_state()}
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

    def _standardize_readout(self, max_frames: int = 200) -> None:
        """Readout standardization (``readout_standardize``) from the invariants of the atoms of up to
        ``max_frames`` training frames (spread over the datasets), before the first step."""
        xs, done = [], 0
        with torch.no_grad():
            for t, rows in enumerate(self.rows["train"]):
                take = np.asarray(rows)[: max(1, max_frames // len(self.tables))]
                for i in range(0, len(take), 16):
                    batch = self.tables[t].batch(take[i:i + 16], dtype=self.dtype, table=t)
                    out = self.model(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)
                    xs.append(out["readout_inputs"])
                done += len(take)
        self.model.readout_norm.set_statistics(torch.cat(xs))
        self.log(f"readout inputs standardized on the atoms of {done} training frames")

    def _shift_energy_offsets(self) -> None:
        """``run.refit_energy_offsets``: e0 += least-squares per-element fit of (E_ref - E_model) over the
        training frames (minimum norm where compositions do not separate the elements)."""
        if self.model_config.get("energy_path") != "readout":
            raise TrainingError("run.refit_energy_offsets needs a model with energy_path = 'readout'")
        elements = [int(z) for z in self.model_config["elements"]]
        counts, residuals = [], []
        with torch.no_grad():
            for t, rows in enumerate(self.rows["train"]):
                table = self.tables[t]
                n = torch.zeros(len(elements), dtype=torch.float64)
                for z in table.numbers.tolist():
                    n[elements.index(int(z))] += 1
                for i in range(0, len(rows), 32):
                    batch = table.batch(rows[i:i + 32], dtype=self.dtype, table=t)
                    e = self.model(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)["energy"]
                    residuals.append(batch.e_tot - e.double())
                    counts.append(n.expand(len(e), -1))
        r = torch.cat(residuals)
        shift = torch.linalg.pinv(torch.cat(counts)) @ r
        with torch.no_grad():
            self.model.atom_energy_offsets.add_(shift.to(self.model.atom_energy_offsets.dtype))
        spread = float((r - torch.cat(counts) @ shift).abs().mean()) * 27211.386
        self.log("per-element energy offsets shifted to the datasets' level: "
                 + ", ".join(f"Z={z}: {float(v):+.6f} Ha" for z, v in zip(elements, shift))
                 + f"; remaining mean |error| {spread:.2f} meV per structure")

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
    @property
    def readout_only(self) -> bool:
        """A model with energy_path "readout" trained without F terms (an MLIP of the same network):
        each step runs the atom trunk and the energy MLP only (``model(..., energy_only=True)``)."""
        return (self.model_config.get("energy_path") == "readout"
                and not any(k.startswith(("fock", "orbital")) for k in self.loss_fn.weights))

    @property
    def energy_only(self) -> bool:
        """``run.trainable = "energy_correction"``: the frozen Hamiltonian's energies are computed once and
        each step runs only the correction's trunk (``model(..., energy_only=True)``)."""
        return self.config.run.trainable == "energy_correction"

    def _prepare_base_energies(self) -> None:
        """Energy and gradient of the frozen Hamiltonian part (E_nn + 1/2 Tr[P (F + h + Delta h)], without
        e0 and the learned correction) on the train and validation frames, in float64 through the
        calculator's path; cached in RUN_DIR/base_energies.pt for resumes (checked against a hash of the
        frozen weights). Also the (fixed) validation F and orbital-energy errors."""
        import copy
        import hashlib

        from ..electronic import ClosedGapError
        from ..model_provider import ModelProvider

        bad = [k for k, w in self.loss_fn.weights.items() if k not in ("energy", "forces")]
        if bad:
            raise TrainingError(f"run.trainable = 'energy_correction' trains on energies and forces only; "
                                f"set the [loss] weights of {bad} to 0 (F is frozen)")
        frozen = {k: v for k, v in self.model.state_dict().items()
                  if not (k == "atom_energy_offsets" or k.startswith(ENERGY_CORRECTION_PREFIXES))}
        gap_gate = self.loss_fn.options["gap_gate"]
        digest = hashlib.sha256()
        for k in sorted(frozen):
            digest.update(k.encode())
            digest.update(frozen[k].detach().cpu().double().numpy().tobytes())
        digest.update(repr(gap_gate).encode())
        digest.update(CHECKPOINT_FORMAT.encode())   # the weights' meaning (SO(2) path basis) too
        for t, table in enumerate(self.tables):   # the data and the frames it covers
            digest.update(f"{table.sha256}:{table.n_frames}".encode())
            digest.update(np.concatenate([self.rows["train"][t], self.rows["val"][t]]).tobytes())
        key = digest.hexdigest()
        path = self.run_dir / "base_energies.pt"
        cached = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
        if cached is not None and (cached.get("key_sha256") != key or len(cached["tables"]) != len(self.tables)):
            self.log(f"{path} was computed for other frozen weights, data or gap_gate: recomputing")
            cached = None
        if cached is None:
            base = copy.deepcopy(self.model).to(torch.float64)
            with torch.no_grad():
                base.atom_energy_offsets.zero_()
            base.atom_energy_mlp = None          # the Hamiltonian part only
            t0 = time.perf_counter()
            entries = []
            for t, table in enumerate(self.tables):
                provider = ModelProvider(base, card={"name": "frozen Hamiltonian", "charge": table.charge},
                                         charge=table.charge)
                rows = np.concatenate([self.rows["train"][t], self.rows["val"][t]])
                n = table.n_occ
                ref_gap = table.mo_energy[:, n] - table.mo_energy[:, n - 1]
                gated = 0
                energy = torch.full((table.n_frames,), math.nan, dtype=torch.float64)
                gradient = torch.full((table.n_frames, len(table.numbers), 3), math.nan, dtype=torch.float64)
                self.log(f"energies and forces of the frozen Hamiltonian on {len(rows)} frames of {table.path} "
                         "(once; cached in base_energies.pt)")
                for r in rows:
                    try:
                        res = provider.compute(table.numbers.numpy(), table.positions_bohr[r].numpy(),
                                               want_gradient=True)
                    except ClosedGapError:
                        gated += 1
                        continue                  # NaN: left out of the energy and force terms
                    eps = np.asarray(res.mo_energy)
                    if eps[n] - eps[n - 1] <= gap_gate * float(ref_gap[r]):   # as energy_gate does
                        gated += 1
                        continue
                    energy[r] = float(res.energy)
                    gradient[r] = torch.as_tensor(np.asarray(res.gradient))
                if gated:
                    self.log(f"{gated} frames left out: predicted HOMO-LUMO gap below {gap_gate} x the reference")
                entries.append({"energy": energy, "gradient": gradient})
            cached = {"key_sha256": key, "tables": entries}
            save_checkpoint(path, cached)
            self.log(f"frozen-Hamiltonian energies done in {time.perf_counter() - t0:.0f} s")
        for table, entry in zip(self.tables, cached["tables"]):
            table.extra["base_energy"] = entry["energy"]
            table.extra["base_gradient"] = entry["gradient"]
        # F does not change: its validation errors once
        f_err, eps_err = [], []
        with torch.no_grad():
            for t, rows in epoch_plan(self.rows["val"], self.config.run.batch_size, None):
                table = self.tables[t]
                batch = table.batch(rows, dtype=self.dtype, table=t)
                pred = predicted_fock(self.model(batch.numbers, batch.positions_bohr, batch.batch))
                idx = torch.as_tensor(rows)
                f_err.append(fock_errors(pred, table.fock[idx], table.ao_atom)["fock_mae"])
                eps_err.append(orbital_errors(pred, table.fock[idx], table.overlap[idx], table.n_occ)["eps_occ_mae"])
        self._frozen_val = {"val_fock_mae_uha": float(torch.cat(f_err).mean()) * UHA,
                            "val_eps_mae_uha": float(torch.cat(eps_err).mean()) * UHA}

    def _forward_loss(self, model, batch, loss_fn=None):
        loss_fn = loss_fn or self.loss_fn
        if loss_fn.needs_positions_grad:
            batch.positions_bohr.requires_grad_(True)
        kw = {"energy_only": True} if (self.energy_only or self.readout_only) else {}
        out = model(batch.numbers, batch.positions_bohr, batch.batch, **kw)
        loss, parts = loss_fn(out, batch)
        return out, loss, parts

    def train_step(self, batch) -> float:
        """One optimizer step on ``batch``; returns the loss (nan if the step was skipped)."""
        self.model.train()
        _, loss, _ = self._forward_loss(self.model, batch)
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
        warmup = self.config.optimizer.warmup_steps
        if warmup and self.progress["step"] <= warmup:
            # linear warm-up over the first steps of the run (the plateau scheduler, which acts only
            # after `patience` epochs, takes over from the base lr)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * min(1.0, (self.progress["step"] + 1) / warmup)
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
                if self.energy_only or self.readout_only:
                    continue
                with torch.no_grad():
                    pred = predicted_fock(out).detach()
                    idx = torch.as_tensor(rows)
                    f_err.append(fock_errors(pred, table.fock[idx], table.ao_atom)["fock_mae"])
                    eps_err.append(orbital_errors(pred, table.fock[idx], table.overlap[idx],
                                                  table.n_occ)["eps_occ_mae"])
        model.train(was_training)
        self._val_s = time.perf_counter() - t0
        # root-mean-square energy (per structure) and force-component errors, from the mean squared terms
        rms = {"val_energy_rmse_mev": math.sqrt(sq["energy"] / n) * HARTREE * 1e3,
               "val_force_rmse_mev_a": math.sqrt(sq["forces"] / n) * HARTREE / BOHR * 1e3}
        if self.energy_only:
            return {"val_loss": loss_sum / n, **self._frozen_val, **rms}
        if self.readout_only:
            return {"val_loss": loss_sum / n, "val_fock_mae_uha": math.nan, "val_eps_mae_uha": math.nan, **rms}
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
            if self.energy_only:
                self._prepare_base_energies()
            del checkpoint
            return self._loop(signals)

    def _time_left(self) -> float:
        budget = self.config.run.max_time_min * 60.0
        return math.inf if budget <= 0 else budget - (time.monotonic() - self._t_start)

    def _loop(self, signals: _StopSignals) -> TrainResult:
        from tqdm import tqdm

        run, p = self.config.run, self.progress
        self._t_start = self._last_ckpt = time.monotonic()
        self._val_s, self._ckpt_s, self._bad_steps, self._last_plot = 0.0, 1.0, 0, -math.inf
        self._time_at_start = p["train_time_s"]
        self._truncate_csv(p["epoch"])
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
        self.scheduler.step(val["val_loss"])
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
        self._append_csv(row)
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
    def _truncate_csv(self, epoch: int) -> None:
        """Drop rows of epochs after the checkpoint (written before a crash), so a resume appends cleanly."""
        path = self.run_dir / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        keep = [r for r in rows if int(r["epoch"]) <= epoch]
        if len(keep) != len(rows):
            _write_csv(path, keep)

    def _append_csv(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.is_file()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})

    def _plot(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_plot < 30.0:
            return
        self._last_plot = time.monotonic()
        try:
            plot_learning_curve(self.run_dir / "metrics.csv", self.run_dir / "learning_curve.png")
        except ImportError:
            pass


def plot_learning_curve(csv_path, png_path) -> bool:
    """learning_curve.png from metrics.csv (matplotlib, Agg); False when there is nothing to plot."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        return False
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False
    import matplotlib
    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    epoch = [int(r["epoch"]) for r in rows]
    energy_curves = [(key, label) for key, label in (("val_energy_rmse_mev", "energy RMSE (meV)"),
                                                     ("val_force_rmse_mev_a", "force RMSE (meV/A)"))
                     if any(math.isfinite(float(r.get(key) or "nan")) for r in rows)]
    fig = Figure(figsize=(13.5 if energy_curves else 9, 3.6), layout="constrained")
    axes = fig.subplots(1, 3 if energy_curves else 2)
    ax1, ax2 = axes[0], axes[1]
    if energy_curves:
        for key, label in energy_curves:
            axes[2].semilogy(epoch, [float(r.get(key) or "nan") for r in rows], label=label)
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("validation error")
        axes[2].legend()
    ax1.semilogy(epoch, [float(r["train_loss"]) for r in rows], label="train loss")
    ax1.semilogy(epoch, [float(r["val_loss"]) for r in rows], label="val loss (EMA)")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1b = ax1.twinx()
    ax1b.semilogy(epoch, [float(r["lr"]) for r in rows], color="0.6", lw=0.8, ls="--")
    ax1b.set_ylabel("learning rate", color="0.4")
    fock = [float(r["val_fock_mae_uha"]) for r in rows]
    if any(math.isfinite(v) for v in fock):
        ax2.semilogy(epoch, fock, label="F MAE")
        ax2.semilogy(epoch, [float(r["val_eps_mae_uha"]) for r in rows], label="occupied eps MAE")
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "F not validated\n(frozen or not trained)", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation error (micro-Hartree)")
    tmp = Path(png_path).with_name(f".{Path(png_path).name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png_path)
    return True


# ----------------------------------------------------------------------------------------------------
# small helpers


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _formula(numbers) -> str:
    from ase import Atoms
    return Atoms(numbers=[int(z) for z in numbers]).get_chemical_formula()


def _dump_toml(table: dict, prefix: str = "") -> str:
    """Minimal TOML writer for configs built in code (tables of scalars, lists and nested tables)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v) if not (isinstance(v, float) and math.isinf(v)) else ("inf" if v > 0 else "-inf")
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    lines, subtables = [], []
    for k, v in table.items():
        if isinstance(v, dict):
            subtables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            subtables.append((k, v))
        else:
            lines.append(f"{k} = {value(v)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in subtables:
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += f"\n[{name}]\n" + _dump_toml(v, name + ".")
        else:
            for item in v:
                out += f"\n[[{name}]]\n" + _dump_toml(item, name + ".")
    return out
