"""The run's metrics log and text outputs: metrics.csv (``CSV_COLUMNS``; append, truncate on resume),
learning_curve.png (``plot_learning_curve``), atomic text writes, and small formatting helpers (``_hms``,
``_dump_toml`` for configs built in code).
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

__all__ = ["CSV_COLUMNS", "append_csv", "plot_learning_curve", "truncate_csv"]

CSV_COLUMNS = ("epoch", "step", "lr", "train_loss", "val_loss", "val_fock_mae_uha", "val_eps_mae_uha",
               "val_energy_rmse_mev", "val_force_rmse_mev_a", "wall_time_s", "epoch_time_s", "structures_per_s")


def truncate_csv(path: Path, epoch: int) -> None:
    """Drop rows of epochs after the checkpoint (written before a crash), so a resume appends cleanly."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["epoch"]) <= epoch]
    if len(keep) != len(rows):
        _write_csv(path, keep)


def append_csv(path: Path, row: dict) -> None:
    """One row of metrics.csv (floats to 8 significant digits); the header when the file is new."""
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.8g}" if isinstance(v, float) else v) for k, v in row.items()})


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
