"""``wavecalc train CONFIG.toml [--resume] [--out RUN_DIR]``: train a Hamiltonian model.

Exit status: 0 when training stopped at a limit (epochs, steps, wall time), 128 + signal number when
stopped by SIGINT/SIGTERM (after writing the checkpoint), 1 on errors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_cli_arguments", "cli_main", "run_training"]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG.toml", help="training config (see configs/*.toml)")
    parser.add_argument("--out", metavar="RUN_DIR", default=None,
                        help="run directory for checkpoints, split, metrics (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR from its checkpoint, exactly where it stopped")
    parser.add_argument("--max-time-min", type=float, default=None, metavar="MIN",
                        help="override run.max_time_min: wall-time budget of this invocation in minutes")
    parser.add_argument("--max-epochs", type=int, default=None, help="override run.max_epochs")
    parser.add_argument("--max-steps", type=int, default=None, help="override run.max_steps (0: no limit)")
    parser.add_argument("--threads", type=int, default=None, help="override run.threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--device", default="cpu", metavar="DEVICE",
                        help="where the model and batches live: cpu, cuda or cuda:N")


def cli_main(args) -> int:
    from .config import ConfigError, load_config
    from ..devices import resolve_device

    resolve_device(args.device)   # DeviceError (a ValueError): one line, exit 2, before any work

    try:
        config = load_config(args.config)
    except (ConfigError, OSError) as exc:
        print(f"wavecalc train: error: {exc}", file=sys.stderr)
        return 1
    return run_training(config, args, "train")


def run_training(config, args, command: str) -> int:
    """Apply the command-line overrides to ``config`` and train (shared with ``wavecalc finetune``)."""
    from .config import ConfigError, TrainingError
    from .trainer import Trainer

    for name in ("max_time_min", "max_epochs", "max_steps", "threads"):
        value = getattr(args, name)
        if value is not None:
            setattr(config.run, name, value)
    if args.no_progress:
        config.run.progress = False
    run_dir = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        result = Trainer(config, run_dir, resume=args.resume, device=getattr(args, "device", None)).fit()
    except (TrainingError, ConfigError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"wavecalc {command}: error: {exc}", file=sys.stderr)
        return 1
    best = (f"best val loss {result.best_val_loss:.4e} at epoch {result.best_epoch}"
            if result.best_epoch >= 0 else "no epoch completed yet")
    print(f"run directory: {result.run_dir} ({best}); continue with --resume, or export with: "
          f"wavecalc export {result.run_dir} models/NAME --test")
    if result.stopped == "signal" and result.signum is not None:
        return 128 + int(result.signum)
    return 0
