"""Validation learning curves of models, from the training stages their cards list (issue #11).

A model card lists every stage that made the model (``training_stages``, each with its ``metrics.csv`` copied
into the model folder). This script joins the stages of each model from the first one trained on energies
(``--from-stage``, default: the first stage whose metrics have a validation force RMSE), putting each stage's
wall time after the previous one's, and plots the validation force and energy RMSE against training wall time
on one core. It also writes the joined curves as JSON (minutes, RMSEs, stage of each point).

    python benchmarks/learning_curves.py readout=models/ethanol-pbe-def2svp \\
        mlip=benchmarks/baselines/ethanol-mlip --out benchmarks/results/learning_curves_ethanol_energy_paths.png

Validation RMSE in float32 with EMA weights, as the trainer logs it (so larger than a float64 test MAE).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from _common import write_result


def joined_curve(model_dir: Path, from_stage: str | None = None) -> dict:
    """The model's validation curves over its energy-trained stages.

    Returns ``{"minutes": [...], "force_rmse_mev_a": [...], "energy_rmse_mev": [...], "stage": [...],
    "stage_starts_min": {stage: minute}}``; minutes count from the start of the first stage included.
    """
    card = json.loads((model_dir / "model.json").read_text())
    out = {"minutes": [], "force_rmse_mev_a": [], "energy_rmse_mev": [], "stage": [], "stage_starts_min": {}}
    started, offset = False, 0.0
    names = [st["run"] for st in card.get("training_stages", [])]
    if from_stage and from_stage not in names:
        raise SystemExit(f"{model_dir}: no training stage {from_stage!r} in its card (stages: {', '.join(names)})")
    for st in card.get("training_stages", []):
        name = st["files"].get("metrics")
        if not name or not (model_dir / name).is_file():
            continue
        with open(model_dir / name, newline="") as f:
            rows = list(csv.DictReader(f))
        has_forces = rows and math.isfinite(float(rows[0].get("val_force_rmse_mev_a", "nan") or "nan"))
        started = started or (st["run"] == from_stage if from_stage else has_forces)
        if not started or not rows:
            continue
        out["stage_starts_min"][st["run"]] = round(offset, 2)
        seen = set()
        for r in rows:   # a resumed run may log an epoch twice (the last line repeats at a stop)
            if r["epoch"] in seen:
                continue
            seen.add(r["epoch"])
            out["minutes"].append(round(offset + float(r["wall_time_s"]) / 60.0, 3))
            out["force_rmse_mev_a"].append(float(r["val_force_rmse_mev_a"]))
            out["energy_rmse_mev"].append(float(r["val_energy_rmse_mev"]))
            out["stage"].append(st["run"])
        offset = out["minutes"][-1]
    if not out["minutes"]:
        raise SystemExit(f"{model_dir}: no training stage with validation energies and forces in its card")
    return out


def plot(curves: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, c in curves.items():
        for ax, key in zip(axes, ("force_rmse_mev_a", "energy_rmse_mev")):
            line, = ax.plot(c["minutes"], c[key], label=label)
            for stage, start in list(c["stage_starts_min"].items())[1:]:
                ax.axvline(start, color=line.get_color(), ls=":", lw=1)
    for ax, ylabel in zip(axes, ("validation force RMSE (meV/A)", "validation energy RMSE (meV)")):
        ax.set_yscale("log")
        ax.set_xlabel("training wall time on one core (min)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title + " (dotted: a new training stage)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="LABEL=MODEL_DIR")
    p.add_argument("--from-stage", default=None, help="first stage to include (default: the first with forces)")
    p.add_argument("--out", default="benchmarks/results/learning_curves.png", help="PNG path")
    p.add_argument("--title", default="validation curves (float32 training, EMA weights)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    curves = {}
    for spec in args.models:
        label, _, path = spec.partition("=")
        curves[label] = joined_curve(Path(path), args.from_stage)
    print(f"{'model':<12} {'stages':<45} {'minutes':>8} {'last force RMSE':>16} {'last energy RMSE':>17}")
    for label, c in curves.items():
        print(f"{label:<12} {', '.join(c['stage_starts_min']):<45} {c['minutes'][-1]:8.1f} "
              f"{c['force_rmse_mev_a'][-1]:16.2f} {c['energy_rmse_mev'][-1]:17.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(curves, out, args.title)
    write_result(out.stem, {"curves": curves, "png": str(out)}, args.json)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
