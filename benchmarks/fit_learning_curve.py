"""How far a fit's Fock network is from the published Hamiltonian models, and what more time would buy.

Reads the validation F MAE of the Fock rounds of a `wavecalc fit` model (``metrics_fock*.csv`` beside the model,
or ``runs/fock*/metrics.csv`` of its work directory) against the rounds' summed training wall time, fits a power
law F = a t^-b to the points of the first round's second half (constant learning rate, before any annealing)
and says how many hours of the same training would reach a given F: the issue's 150 uHa and QHNet's MD17 value
for the molecule (25,000 frames and a GPU; ``../shared/notes/anchors.md``). Prints a table, writes JSON.

    python benchmarks/fit_learning_curve.py models/malondialdehyde-pbe-def2svp --qhnet 21.52 11.97

A power law fitted to minutes of training says what the next hours would give if nothing else changed (the
same frames growing at the same pace, the same network); it is a yardstick, not a promise.
"""
from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np
from _common import table, write_result


def fock_rounds(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    """[(round, minutes from the first round's start, val F MAE uHa, train structures)] of the Fock rounds."""
    files = sorted(path.glob("metrics_fock*.csv")) or sorted(path.glob("runs/fock*/metrics.csv"))
    if not files:
        raise SystemExit(f"{path}: no metrics_fock*.csv (model directory) or runs/fock*/metrics.csv (work "
                         "directory of a fit)")
    rounds, offset = [], 0.0
    for f in files:
        with open(f) as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("val_fock_mae_uha") not in (None, "", "nan")]
        if not rows:
            continue
        t = np.array([float(r["wall_time_s"]) for r in rows]) / 60.0
        fmae = np.array([float(r["val_fock_mae_uha"]) for r in rows])
        name = f.stem.replace("metrics_", "") if f.name != "metrics.csv" else f.parent.name
        rounds.append((name, offset + t, fmae, len(rows)))
        offset += float(t[-1])
    return rounds


def power_law(minutes: np.ndarray, fmae: np.ndarray) -> tuple[float, float]:
    """(a, b) of F = a t^-b, least squares in log-log."""
    slope, intercept = np.polyfit(np.log(minutes), np.log(fmae), 1)
    return float(math.exp(intercept)), float(-slope)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="a fitted model directory or a fit's work directory")
    p.add_argument("--target", type=float, default=150.0, help="uHa (the issue's F target)")
    p.add_argument("--qhnet", type=float, nargs="*", default=[], help="QHNet's F MAE on the molecule, uHa")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    path = Path(args.path)
    rounds = fock_rounds(path)
    name, t, fmae, _ = rounds[0]
    half = t >= 0.5 * t[-1]
    a, b = power_law(t[half], fmae[half])
    rows = [[r, f"{tr[0]:.1f}-{tr[-1]:.1f}", f"{fr[0]:.0f}", f"{fr[-1]:.0f}", f"{fr.min():.0f}"]
            for r, tr, fr, _ in rounds]
    print(f"{path}: Fock rounds, validation F MAE (uHa) against summed training minutes")
    print(table(["round", "minutes", "F first", "F last", "F best"], rows))
    last = rounds[-1]
    print(f"\nfirst round, second half: F = {a:.0f} t^-{b:.2f} (t in minutes); at its end {fmae[-1]:.0f} uHa, "
          f"after every round {last[2][-1]:.0f} uHa")
    goals = [("target", args.target)] + [(f"QHNet {q:g}", q) for q in args.qhnet]
    reach = []
    for label, goal in goals:
        minutes = (a / goal) ** (1.0 / b) if b > 0 else math.inf
        reach.append({"goal": label, "f_uha": goal, "hours_of_fock_training": round(minutes / 60.0, 1)})
        print(f"  {label} ({goal:g} uHa): ~{minutes / 60:.1f} h of the same training on one core")
    result = {"benchmark": "fit_learning_curve", "path": str(path),
              "rounds": [{"round": r, "minutes": [round(float(x), 2) for x in tr],
                          "val_fock_mae_uha": [round(float(x), 1) for x in fr]} for r, tr, fr, _ in rounds],
              "power_law": {"a": a, "b": b, "fitted_on": f"{name}, minutes {t[half][0]:.1f}-{t[-1]:.1f}"},
              "reach": reach}
    out = write_result(f"fit_learning_curve_{path.name}", result, args.json)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
