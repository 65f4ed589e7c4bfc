"""What keeping a frozen Fock trunk's descriptors buys a fit's readout training (``run.frozen_trunk_cache_mb``).

A fit's readout run (``--run``, default its first, ``runs/readout``) is trained anew from the Fock network it
started from, on its own data and split, for ``--epochs`` epochs with the descriptors computed once per frame
and without (``frozen_trunk_cache_mb = 0``), one after the other on one core. Prints and writes: the time of the
first epoch (which builds the entries of every training and validation frame), the training steps' rate of the
later epochs, the build cost per frame, and the validation losses of both arms (they must agree to rounding:
the cached step is the trunk's step).

    python benchmarks/frozen_trunk_speed.py models/malondialdehyde-pbe-def2svp.work --epochs 3

Run it from the folder the fit ran in (its run configs name the datasets relative to it).
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import table, write_result


def arm_config(config: str, epochs: int, cache_mb: float) -> str:
    """The run's config for ``epochs`` epochs with the cache size set (0: off), the data order unchanged."""
    config = re.sub(r"^max_epochs\s*=.*$", f"max_epochs = {epochs}", config, flags=re.M)
    config = re.sub(r"^frozen_trunk_cache_mb\s*=.*\n", "", config, flags=re.M)
    config, n = re.subn(r"^\[run\]\s*$", f"[run]\nfrozen_trunk_cache_mb = {cache_mb!r}", config, count=1,
                        flags=re.M)
    if n != 1:
        raise SystemExit("the run's config.toml has no [run] table to set frozen_trunk_cache_mb in")
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a `wavecalc fit` work directory")
    parser.add_argument("--run", default="readout",
                        help="the readout run (under runs/) whose config is trained anew")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="/tmp/frozen_trunk_speed")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work, out = Path(args.workdir).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = (work / "runs" / args.run / "config.toml").read_text()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = {"workdir": str(work), "run": args.run, "epochs": args.epochs, "arms": {}}
    rows = []
    for name, mb in (("trunk run every step", 0.0), ("descriptors kept", 2048.0)):
        key = "cached" if mb else "uncached"
        (out / f"{key}.toml").write_text(arm_config(base, args.epochs, mb))
        shutil.rmtree(out / key, ignore_errors=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ase_wavecalc.cli", "train", str(out / f"{key}.toml"), "--out",
                        str(out / key)], check=True, stdout=subprocess.DEVNULL, env=env)
        wall = time.perf_counter() - start
        with open(out / key / "metrics.csv") as f:
            epochs = list(csv.DictReader(f))
        split = (out / key / "train.log").read_text()
        n = re.search(r"train (\d+) / val (\d+) structures", split)
        later = [float(e["structures_per_s"]) for e in epochs[1:]]
        arm = {"wall_s": wall, "first_epoch_s": float(epochs[0]["epoch_time_s"]),
               "later_structures_per_s": sum(later) / len(later) if later else float("nan"),
               "val_loss": [float(e["val_loss"]) for e in epochs],
               "train_frames": int(n.group(1)), "val_frames": int(n.group(2))}
        result["arms"][key] = arm
        rows.append([name, f"{arm['first_epoch_s']:.0f}", f"{arm['later_structures_per_s']:.1f}",
                     " / ".join(f"{v:.4e}" for v in arm["val_loss"])])
    c, u = result["arms"]["cached"], result["arms"]["uncached"]
    frames = c["train_frames"] + c["val_frames"]
    per_structure = 1.0 / u["later_structures_per_s"]
    result["build_s_per_frame"] = (c["first_epoch_s"] - c["train_frames"] / c["later_structures_per_s"]) / frames
    result["speedup"] = c["later_structures_per_s"] / u["later_structures_per_s"]
    # epochs after which the cache has paid for itself: build / (saving per frame and epoch)
    saving = per_structure - 1.0 / c["later_structures_per_s"]
    result["break_even_epochs"] = result["build_s_per_frame"] / saving if saving > 0 else float("inf")
    print(table(["readout steps", "first epoch (s)", "later epochs (structures/s)", "validation loss per epoch"],
                rows))
    print(f"build: {result['build_s_per_frame']:.2f} s per frame ({frames} frames); later epochs "
          f"{result['speedup']:.2f}x; paid back after {result['break_even_epochs']:.0f} epochs")
    print(f"wrote {write_result('frozen_trunk_speed', result, args.json)}")


if __name__ == "__main__":
    main()
