"""Checkpoint I/O of a training run: the checkpoint format and its check, atomic ``save_checkpoint``,
``load_checkpoint`` / ``load_best`` (``weights_only=True``), the EMA shadow weights that checkpoints hold,
the RNG states saved for a bit-for-bit resume, and ``initial_weights`` (the weights ``run.init_weights``
points to: a run directory or an exported model).
"""
from __future__ import annotations

import os
import re
import random
import time
from pathlib import Path

import numpy as np
import torch

from .config import TrainingError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_KEYS", "ExponentialMovingAverage", "initial_weights", "load_best",
           "load_checkpoint", "remove_stale_temporaries", "save_checkpoint"]

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
# checkpoints and RNG state


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


_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)(\.png)?$")


def remove_stale_temporaries(run_dir) -> list[str]:
    """Delete the temporary files (``.NAME.tmpPID``) that a process killed mid-write left in ``run_dir``
    (SIGKILL runs no cleanup); files of a process still alive are kept. Returns the names removed. The
    complete files they were to replace are untouched: every write goes to a temporary and is renamed."""
    removed = []
    for path in Path(run_dir).iterdir() if Path(run_dir).is_dir() else ():
        m = _TEMPORARY.match(path.name)
        if not m or _alive(int(m.group(1))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):   # OverflowError: a number no process can have
        return False
    except PermissionError:
        return True
    return True


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


def initial_weights(path) -> dict:
    """A state dict to start from: a run directory (EMA weights of best.pt, else of checkpoint.pt) or
    an exported model directory (weights.safetensors). Read without executing code; parameter names of
    earlier versions are renamed (``model.config.canonical_state_dict``)."""
    from ..model.config import canonical_state_dict

    try:
        return canonical_state_dict(_initial_weights(path))
    except ValueError as exc:
        raise TrainingError(f"run.init_weights {path}: {exc}") from None


def _initial_weights(path) -> dict:
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
