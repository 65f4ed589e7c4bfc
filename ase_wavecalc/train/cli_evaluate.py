"""``wavecalc evaluate MODEL DATASET [--frames test|all|IDS_FILE] [--json OUT]``: Hamiltonian metrics.

MODEL: a shipped model name or directory (``model.io.load_model``), or a training run directory (its
EMA weights). ``--frames test`` (default) takes the test frame ids that the model card (or the run's
split.json) lists for DATASET, matched by sha256 and else by file name; ``all`` takes every frame;
anything else is a file of frame ids (JSON list or whitespace-separated). Prints a table; ``--json``
writes the metrics (keys of ``metrics.METRIC_UNITS`` plus n_structures, seconds, model, dataset, frames).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_cli_arguments", "cli_main", "evaluate"]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="model name or directory, or a training run directory")
    parser.add_argument("dataset", metavar="DATASET", help="dataset file (.db)")
    parser.add_argument("--frames", default="test", metavar="test|all|IDS_FILE",
                        help="which frames: the model's test split (default), all, or a file of frame ids")
    parser.add_argument("--json", metavar="OUT", default=None, help="write the metrics as JSON")
    parser.add_argument("--batch-size", type=int, default=16, help="structures per batch (default 16)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default=None,
                        help="run the model in this precision (default: the one it was saved in)")


def _test_frames(split_datasets: list[dict], table, path: Path) -> list[int]:
    """Test frame ids listed for this dataset (by sha256, else by file name)."""
    for d in split_datasets:
        if d.get("sha256") == table.sha256:
            return list(d["test_frames"] if "test_frames" in d else d["test"])
    names = [d for d in split_datasets if Path(d.get("name", d.get("path", ""))).name == path.name]
    if len(names) == 1:
        print(f"warning: {path} differs from the dataset the model was trained on (sha256); using the test "
              "frame ids recorded under the same file name", file=sys.stderr)
        d = names[0]
        return list(d["test_frames"] if "test_frames" in d else d["test"])
    raise ValueError(f"the model's split lists no test frames for {path.name}: use --frames all or a file "
                     "of frame ids")


def evaluate(model_ref: str, dataset_path, frames: str = "test", batch_size: int = 16, dtype=None) -> dict:
    """Load a model and dataset, select frames, and return the metrics dict (see module docstring)."""
    import torch

    import warnings

    from ..domain import formula
    from .data import load_table, read_frame_ids
    from .metrics import evaluate_model

    dataset_path = Path(dataset_path)
    ref = Path(model_ref)
    card = {}
    if ref.is_dir() and (ref / "checkpoint.pt").is_file():
        from .cli_export import load_run_model
        model, _ = load_run_model(ref)
        split = json.loads((ref / "split.json").read_text())["datasets"]
    else:
        from ..model.io import load_model
        model, card = load_model(model_ref, dtype=torch.float64)
        split = (card.get("split") or {}).get("datasets", [])
        dtype = dtype or card.get("dtype")  # the precision it was trained and tested in (exact round trip)
    if dtype in ("float32", "float64"):
        model = model.to(torch.float64 if dtype == "float64" else torch.float32)
    table = load_table(dataset_path)
    trained_on = ((card.get("training_domain") or {}).get("compositions")) or []
    if trained_on and formula(table.numbers.numpy()) not in trained_on:
        # measuring a model on molecules it never saw can be the point (transferability), so a warning
        warnings.warn(f"{dataset_path.name} holds {formula(table.numbers.numpy())}, but model {model_ref!r} was "
                      f"trained on {', '.join(trained_on)} only (the calculator refuses such molecules)",
                      UserWarning, stacklevel=2)
    if frames == "all":
        ids = [int(f) for f in table.frame]
    elif frames == "test":
        ids = _test_frames(split, table, dataset_path)
    else:
        ids = read_frame_ids(frames)
    rows = table.rows_of_frames(ids)
    result = evaluate_model(model, [table], [rows], batch_size=batch_size)
    result.update(model=str(model_ref), dataset=str(dataset_path), dataset_sha256=table.sha256,
                  frames=frames if frames in ("test", "all") else str(frames),
                  dtype=str(next(iter(model.parameters())).dtype).replace("torch.", ""))
    return result


def cli_main(args) -> int:
    from .metrics import format_metrics

    try:
        result = evaluate(args.model, args.dataset, frames=args.frames, batch_size=args.batch_size,
                          dtype=args.dtype)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"wavecalc evaluate: error: {exc}", file=sys.stderr)
        return 1
    print(format_metrics(result, f"{args.model} on {args.dataset} ({args.frames} frames):"))
    print(f"  {'seconds':<32s}{result['seconds']:12.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"metrics written to {args.json}")
    return 0
