"""Training phases of a fit: configs built from the recipe's tables and the fit's datasets, run by the
project's ``Trainer`` for a given number of seconds, resumed exactly where a killed fit left them.

Each training run lives in ``WORKDIR/runs/<name>`` with the usual checkpoint, split and metrics; a run that
exists is resumed (``--resume`` semantics: bit for bit), a new one starts from ``init_weights``.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

__all__ = ["phase_config", "train_for", "dataset_specs"]


def dataset_specs(workdir: Path, names, val_fraction: float) -> list[dict]:
    """[[data.datasets]] tables for the dataset files ``names`` of the work directory: all converged frames,
    ``val_fraction`` of them (at least 1 of the first file) for validation, no test frames (those are the
    test file's, never trained on)."""
    from ..dataset import connect, frame_ids

    out = []
    for k, name in enumerate(names):
        n = len(frame_ids(connect(workdir / name), converged=True))
        if n == 0:
            continue
        val = int(round(val_fraction * n))
        if k == 0:
            val = max(1, val)
        if n - val < 1:
            continue
        out.append({"path": str(workdir / name), "train": n - val, "val": val, "test": 0})
    return out


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def phase_config(tables: dict, datasets: list[dict], seed: int = 0, model_extra: dict | None = None,
                 run_extra: dict | None = None, optimizer_extra: dict | None = None) -> str:
    """The TOML text of a training config: the recipe's phase ``tables`` (model, loss, optimizer, scheduler,
    run) with the datasets, threads = 1, no progress bar."""
    buf = io.StringIO()
    buf.write("# written by `wavecalc fit` from its recipe\n[data]\n")
    buf.write(f"seed = {int(seed)}\n")
    for d in datasets:
        buf.write("\n[[data.datasets]]\n")
        for k, v in d.items():
            buf.write(f"{k} = {_toml_value(v)}\n")
    extras = {"model": model_extra or {}, "run": {"threads": 1, "progress": False, "seed": int(seed),
                                                  **(run_extra or {})},
              "optimizer": optimizer_extra or {}}
    for table in ("model", "loss", "optimizer", "scheduler", "run"):
        values = {**tables.get(table, {}), **extras.get(table, {})}
        buf.write(f"\n[{table}]\n")
        for k, v in values.items():
            buf.write(f"{k} = {_toml_value(v)}\n")
    return buf.getvalue()


def train_for(run_dir: Path, config_text: str, seconds: float, log=print, device=None) -> dict:
    """Train (or resume) the run in ``run_dir`` for at most ``seconds`` of wall time on ``device`` (the fit
    request's ``device``: "cpu", "cuda", "cuda:N"; None: cpu); returns
    {"best_epoch", "best_val_loss", "stopped", "epochs"}. A new run that has no validated epoch when the time is
    up trains one more epoch, so every phase hands a validated model to the next."""
    from ..train.config import parse_config
    from ..train.trainer import Trainer

    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib

    from .pack import PACKED

    run_dir = Path(run_dir)
    resume = (run_dir / "checkpoint.pt").is_file()
    if resume:   # the saved config is the run's; only the time limit changes
        config_text = (run_dir / "config.toml").read_text()
    table = tomllib.loads(config_text)
    packed = not resume and (run_dir / PACKED).exists()
    if packed:
        # a run packed in an earlier session: restart from its weights (fresh optimizer, new split), on the
        # dataset files of this work directory (the packed config names the old machine's paths)
        table.setdefault("run", {})["init_weights"] = str(run_dir)
        # a fresh Adam moves every weight by ~lr in its first steps: warm up so as not to undo the training
        table.setdefault("optimizer", {})["warmup_steps"] = max(200, int(table["optimizer"].get("warmup_steps", 0)))
        for d in table["data"]["datasets"]:
            d["path"] = str(run_dir.parent.parent / Path(d["path"]).name)
        config_text = ""
    config = parse_config(table, base_dir=str(run_dir.parent), source=config_text)
    config.run.max_time_min = max(seconds, 1.0) / 60.0
    result = Trainer(config, run_dir, resume=resume, log=log, device=device).fit()
    if packed and (run_dir / "checkpoint.pt").is_file():
        (run_dir / PACKED).unlink()          # from now on the run resumes from its own checkpoint
    if result.best_epoch < 0 and result.stopped != "signal":
        config.run.max_time_min = 0.0
        config.run.max_epochs = 1
        result = Trainer(config, run_dir, resume=True, log=log, device=device).fit()
    return {"best_epoch": int(result.best_epoch),
            "best_val_loss": float(result.best_val_loss) if math.isfinite(result.best_val_loss) else None,
            "stopped": str(result.stopped)}
