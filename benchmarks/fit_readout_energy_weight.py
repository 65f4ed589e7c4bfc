"""How much weight a fit's readout should give the energy: its last readout run trained on with each energy
weight, errors on the fit's held-out test frames through ``WaveCalculator``.

A fit's readout trains with the recipe's loss weights (energy 100 per eV^2, forces 1000 per (eV/A)^2), which
left malondialdehyde's 5-h model at an energy MAE of 2.51 meV against a target of 2 with forces at 12.2 meV/A
against 20. MACE's recipe ends with a stage where the energy weighs as much as the forces. Here the fit's
final readout run (``--run``, default the one its ``fit.json`` names last) is trained on from its weights, on its own
data and split, for ``--minutes`` on one core per weight (one after the other, or side by side with
``--parallel``), the same learning rate for each; the control is the recipe's own weight, so the table
separates the effect of the weight from that of the extra training. Prints a table, writes JSON.

    python benchmarks/fit_readout_energy_weight.py models/malondialdehyde-pbe-def2svp.work --weights 100 1000 \
        --minutes 10

Run it from the folder the fit ran in (its run configs name the datasets relative to it).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from _common import table, write_result
from fit_candidate_order import evaluate


def arm_config(config: str, run: Path, weight: float, lr: float, minutes: float, cosine: bool = False) -> str:
    """The run's config with the energy weight, learning rate, time limit and starting weights replaced;
    ``cosine``: the learning rate annealed to 1e-5 at the time limit instead of the run's plateau schedule."""
    def set_key(text: str, section: str, key: str, value: str) -> str:
        head = re.search(rf"^\[{re.escape(section)}\]\s*$", text, flags=re.M)
        if head is None:
            return text + f"\n[{section}]\n{key} = {value}\n"
        end = re.search(r"^\[", text[head.end():], flags=re.M)
        stop = head.end() + (end.start() if end else len(text) - head.end())
        body = text[head.end():stop]
        line = re.compile(rf"^{re.escape(key)}\s*=.*$", flags=re.M)
        body = line.sub(f"{key} = {value}", body) if line.search(body) else f"\n{key} = {value}" + body
        return text[:head.end()] + body + text[stop:]

    if cosine:
        head = re.search(r"^\[scheduler\]\s*$", config, flags=re.M)
        if head is not None:
            end = re.search(r"^\[", config[head.end():], flags=re.M)
            stop = head.end() + (end.start() if end else len(config) - head.end())
            config = config[:head.start()] + config[stop:]
        config += f'\n[scheduler]\nkind = "cosine"\nmin_lr = 1e-05\nhorizon_min = {float(minutes)!r}\n'
    config = set_key(config, "loss", "energy", repr(float(weight)))
    config = set_key(config, "optimizer", "lr", repr(float(lr)))
    config = set_key(config, "optimizer", "warmup_steps", "200")
    config = set_key(config, "run", "max_time_min", repr(float(minutes)))
    config = set_key(config, "run", "init_weights", f'"{run}"')
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a `wavecalc fit` work directory")
    parser.add_argument("--run", default=None, help="the readout run to start from (default: the fit's last, from its fit.json)")
    parser.add_argument("--weights", type=float, nargs="+", default=[100.0, 1000.0])
    parser.add_argument("--lr", type=float, default=3e-4, help="learning rate of every arm (the recipe's "
                                                                 "active.continue_lr)")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--cosine", action="store_true", help="anneal each arm's learning rate to 1e-5 at the "
                                                              "time limit (cosine) instead of the run's plateau "
                                                              "schedule")
    parser.add_argument("--parallel", action="store_true", help="train the arms side by side (one core each)")
    parser.add_argument("--out", default="/tmp/fit_readout_energy_weight")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work, out = Path(args.workdir).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.run:
        run = Path(args.run).resolve()
    else:                                     # the fit's last readout run, as its state records it
        import json
        run = work / "runs" / json.loads((work / "fit.json").read_text())["last_readout"]
    base = (run / "config.toml").read_text()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = {"workdir": str(work), "run": str(run), "lr": args.lr, "minutes": args.minutes,
              "schedule": "cosine" if args.cosine else "the run's", "arms": {}}
    procs = {}
    for w in args.weights:
        name = f"energy_{w:g}" + ("_cosine" if args.cosine else "")
        (out / f"{name}.toml").write_text(arm_config(base, run, w, args.lr, args.minutes, args.cosine))
        shutil.rmtree(out / f"run_{name}", ignore_errors=True)
        cmd = [sys.executable, "-m", "ase_wavecalc.cli", "train", str(out / f"{name}.toml"), "--out",
               str(out / f"run_{name}")]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env)
        if not args.parallel and procs[name].wait() != 0:
            raise SystemExit(f"the {name} arm failed (see {out}/run_{name}/train.log)")
    rows = []
    for name, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"the {name} arm failed (see {out}/run_{name}/train.log)")
        subprocess.run([sys.executable, "-m", "ase_wavecalc.cli", "export", str(out / f"run_{name}"),
                        str(out / f"model_{name}"), "--force"], check=True, capture_output=True)
        m = evaluate(out / f"model_{name}", work / "test.db")
        result["arms"][name] = m
        rows.append([name.split("_", 1)[1], f"{m['energy_mae_meV']:.2f}", f"{m['force_mae_meV_A']:.1f}",
                     f"{m['force_mae_300K']:.1f}", f"{m['force_mae_500K']:.1f}"])
    start = evaluate(work.parent / work.name.removesuffix(".work"), work / "test.db") \
        if (work.parent / work.name.removesuffix(".work") / "model.json").is_file() else None
    if start is not None:
        result["exported_model"] = start
        rows.insert(0, ["(the fit's model)", f"{start['energy_mae_meV']:.2f}", f"{start['force_mae_meV_A']:.1f}",
                        f"{start['force_mae_300K']:.1f}", f"{start['force_mae_500K']:.1f}"])
    print(table(["energy weight", "energy MAE (meV)", "force MAE (meV/A)", "300 K run", "500 K run"], rows))
    print(f"wrote {write_result('fit_readout_energy_weight', result, args.json)}")


if __name__ == "__main__":
    main()
