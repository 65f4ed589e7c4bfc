"""``wavecalc committee MODEL DATASET.db --out NEW_MODEL [--size 8]``: add an uncertainty committee to a
readout model (``train/committee.py``).

The model's weights are kept bit for bit (energy, forces, F unchanged); K readout heads are added and fitted
on the dataset's frames that are not the card's test frames (90% to fit, 10% to stop on and to calibrate the
warning threshold). The new card gains ``committee`` (size, calibration, warning threshold); the calculator
then reports ``energy_std`` with every energy and ``forces_std`` on request, and warns once when
``energy_std`` passes the threshold.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["add_cli_arguments", "cli_main", "add_committee"]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name or directory (energy_path 'readout')")
    parser.add_argument("dataset", help="the dataset the model was trained on (.db)")
    parser.add_argument("--out", required=True, help="directory of the new model")
    parser.add_argument("--size", type=int, default=8, help="committee members (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default)")


def add_committee(model_name, dataset, out, size: int = 8, seed: int = 0, force: bool = False, log=print) -> dict:
    """Load ``model_name``, fit a committee of ``size`` on ``dataset``, save to ``out``; returns the card."""
    from ..model import build_model
    from ..model.io import _read_card, _resolve, energy_labels, load_model, save_model
    from .committee import fit_committee
    from .data import load_table

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty (--force overwrites)")
    source = _resolve(model_name)
    # the stored precision, so that the weights are kept bit for bit
    dtype = torch.float32 if _read_card(source).get("dtype") == "float32" else torch.float64
    base, card = load_model(model_name, dtype=dtype)
    config = {**card["config"], "committee_size": int(size)}
    try:   # the energy path checks the config: only the readout path carries a committee
        model = build_model(config).to(dtype)
    except ValueError as exc:
        raise ValueError(f"model {model_name!r}: {exc}") from None
    # the weights kept bit for bit: all but an existing committee, which is refit (every member starts afresh
    # from the readout in fit_committee, so a refit may also change the size)
    kept = {k: v for k, v in base.state_dict().items() if not k.startswith("committee_mlps.")}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith("committee_mlps.") for k in missing):
        raise ValueError(f"weights do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    labels = energy_labels(card)
    table = load_table(dataset, keys=("e_tot",), labels=labels)
    name = Path(dataset).name
    split = [d for d in card["split"]["datasets"] if d["name"] == name]
    if not split:
        raise ValueError(f"{name} is not among the model's datasets {[d['name'] for d in card['split']['datasets']]}")
    held = set(split[0]["test_frames"])
    pool = np.array([i for i, f in enumerate(table.frame) if int(f) not in held])
    rng = np.random.default_rng(seed)
    pool = pool[rng.permutation(len(pool))]
    n_val = max(1, len(pool) // 10)
    summary = fit_committee(model, [table], [np.sort(pool[n_val:])], [np.sort(pool[:n_val])], seed=seed, log=log)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if k in kept and not torch.equal(kept[k], v):
                raise RuntimeError(f"fitting the committee changed {k}")
    card = {k: v for k, v in card.items() if k not in ("config", "weights_sha256", "format_version", "versions")}
    card["committee"] = {**summary, "dataset": name, "labels": labels, "frames": int(len(pool)), "seed": seed}
    card["name"] = out.name
    save_model(model, out, card)
    for extra in source.iterdir():   # training records (configs, metrics, curves) come along
        if extra.name not in ("model.json", "weights.safetensors") and extra.is_file():
            (out / extra.name).write_bytes(extra.read_bytes())
    return card


def cli_main(args) -> int:
    if args.threads > 0:   # an entry point may set process-wide state; the library never does
        torch.set_num_threads(args.threads)
    try:
        add_committee(args.model, args.dataset, args.out, size=args.size, seed=args.seed, force=args.force)
    except (ValueError, FileExistsError, FileNotFoundError, KeyError) as exc:
        print(f"wavecalc committee: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} with a committee of {args.size}")
    return 0
