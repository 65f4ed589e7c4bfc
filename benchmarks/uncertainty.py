"""Does the committee's spread track the model's actual error? (issue #11, uncertainty)

For a model with a committee (``wavecalc committee``), on held-out test frames of its dataset and on frames
from another dataset it never saw (e.g. 900 K MD, made with ``wavecalc generate --temperature 900``): per
frame the actual energy error and force MAE against the reference, ``energy_std`` and the mean of
``forces_std``. Reports Spearman rank correlations between spread and error, the spread's median in each
set, and how many frames of each set pass the card's warning threshold (on the held-out set: false alarms).

    python benchmarks/uncertainty.py --model models/ethanol-pbe-def2svp --dataset data/ethanol_pbe_def2svp.db \
        --extra /tmp/ethanol_900K.db [--md-temperature 1500 --md-seeds 1 2 --md-steps 2000]

With ``--md-temperature`` it also runs Langevin MD hot enough to leave the training data and reports, per run,
the step of the first warning against the step where the run stopped (the model refused a geometry or the
bond graph changed).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, table, write_result  # noqa: E402


def frame_errors(model, dataset, frames=None) -> dict:
    from ase import Atoms
    from scipy.stats import spearmanr

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.dataset import read_dataset
    from ase_wavecalc.units import BOHR, HARTREE, HARTREE_PER_BOHR

    data = read_dataset(dataset, keys=["e_tot", "gradient"])
    idx = range(len(data["frame"])) if frames is None else [list(data["frame"]).index(f) for f in frames]
    calc = WaveCalculator(model=str(model))
    rows = {"energy_error_mev": [], "force_mae_mev_a": [], "energy_std_mev": [], "forces_std_mev_a": []}
    for i in idx:
        atoms = Atoms(numbers=data["numbers"], positions=data["positions_bohr"][i] * BOHR)
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        f_ref = -data["gradient"][i] * HARTREE_PER_BOHR
        rows["energy_error_mev"].append((e - data["e_tot"][i] * HARTREE) * 1e3)
        rows["force_mae_mev_a"].append(np.abs(f - f_ref).mean() * 1e3)
        rows["energy_std_mev"].append(calc.get_property("energy_std", atoms) * 1e3)
        rows["forces_std_mev_a"].append(calc.get_property("forces_std", atoms).mean() * 1e3)
    out = {k: np.asarray(v) for k, v in rows.items()}
    err = out["energy_error_mev"]
    out["abs_energy_error_mev"] = np.abs(err - np.median(err))   # the offset of a composition is not an error here
    out["spearman"] = {
        "energy_std_vs_force_mae": float(spearmanr(out["energy_std_mev"], out["force_mae_mev_a"])[0]),
        "forces_std_vs_force_mae": float(spearmanr(out["forces_std_mev_a"], out["force_mae_mev_a"])[0]),
        "energy_std_vs_abs_energy_error": float(spearmanr(out["energy_std_mev"], out["abs_energy_error_mev"])[0])}
    return out


def md_warnings(model, molecule: str, temperature: float, seeds, steps: int, every: int = 5, out_dir=".") -> list:
    """Langevin MD (0.5 fs, friction 0.01/fs) with the model at ``temperature`` per seed, until ``steps`` or a
    stop (the model refuses a geometry, or the bond graph changes). Then energy_std on every ``every``-th frame:
    the first step above the card's warning threshold, against the step of the stop."""
    import warnings

    from ase.build import molecule as build
    from ase.calculators.calculator import CalculationFailed, InputError
    from ase.io import read
    from md_stability import first_broken_frame

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.md import run_md

    limit = json.loads((Path(model) / "model.json").read_text())["committee"]["energy_std_warning_mev"]
    runs = []
    for seed in seeds:
        traj = Path(out_dir) / f"uncertainty_md_T{temperature:g}_s{seed}.traj"
        stop, reason = None, ""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                run_md(build(molecule), WaveCalculator(model=str(model)), ensemble="langevin", temperature=temperature,
                       steps=steps, seed=seed, trajectory=str(traj), progress=False, log=None)
            except (InputError, CalculationFailed) as exc:
                reason = str(exc)
            frames = read(traj, ":")
            if reason:
                stop = len(frames) - 1
            broken = first_broken_frame(traj)
            if broken is not None and (stop is None or broken < stop):
                stop, reason = broken, f"bond graph changed at step {broken}"
            calc = WaveCalculator(model=str(model))
            spread = []
            for k in range(0, len(frames) if stop is None else stop + 1, every):
                a = frames[k].copy()
                a.calc = calc
                try:
                    a.get_potential_energy()
                    spread.append((k, calc.get_property("energy_std", a) * 1e3))
                except (InputError, CalculationFailed):
                    break
        first = next((k for k, v in spread if v > limit), None)
        runs.append({"seed": seed, "steps": len(frames) - 1, "stopped_at": stop, "reason": reason[:200],
                     "first_warning_step": first, "max_energy_std_mev": max(v for _, v in spread),
                     "energy_std_mev": spread})
        print(f"  {temperature:g} K seed {seed}: {'stopped at ' + str(stop) if stop is not None else 'completed'}"
              f" ({reason[:80]}); first warning at step {first}; max energy_std "
              f"{runs[-1]['max_energy_std_mev']:.1f} meV (threshold {limit:.1f})", flush=True)
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", required=True, help="the model's dataset (its test frames are used)")
    p.add_argument("--extra", nargs="*", default=[], help="datasets of frames the model never saw")
    p.add_argument("--md-temperature", type=float, default=None,
                   help="also run Langevin MD at this temperature (K) and see whether warnings precede stops")
    p.add_argument("--md-seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--md-steps", type=int, default=2000)
    p.add_argument("--md-molecule", default="CH3CH2OH")
    p.add_argument("--json", default=None, help="JSON path (default: benchmarks/results/)")
    args = p.parse_args(argv)
    card = json.loads((Path(args.model) / "model.json").read_text())
    if "committee" not in card:
        raise SystemExit(f"{args.model} has no committee: add one with `wavecalc committee`")
    limit = card["committee"]["energy_std_warning_mev"]
    name = Path(args.dataset).name
    test = [d for d in card["split"]["datasets"] if d["name"] == name][0]["test_frames"]
    sets = {f"held-out test frames ({name})": (args.dataset, test)}
    sets.update({f"unseen: {Path(x).name}": (x, None) for x in args.extra})
    result, rows = {"machine": machine_info(), "model": args.model, "warning_mev": limit, "sets": {}}, []
    for label, (path, frames) in sets.items():
        t0 = time.perf_counter()
        r = frame_errors(args.model, path, frames)
        warned = int((r["energy_std_mev"] > limit).sum())
        result["sets"][label] = {**{k: v.tolist() for k, v in r.items() if k != "spearman"},
                                 "spearman": r["spearman"], "n_frames": len(r["force_mae_mev_a"]), "n_warned": warned,
                                 "seconds": time.perf_counter() - t0}
        rows.append([label, len(r["force_mae_mev_a"]), f"{np.median(r['force_mae_mev_a']):.1f}",
                     f"{np.median(r['energy_std_mev']):.2f}", f"{np.median(r['forces_std_mev_a']):.1f}",
                     f"{r['spearman']['energy_std_vs_force_mae']:.2f}", f"{r['spearman']['forces_std_vs_force_mae']:.2f}",
                     f"{warned}"])
    print(f"\n{args.model}: committee of {card['committee']['size']}, warning above {limit:.1f} meV energy_std")
    print(table(["frames", "n", "median force MAE", "median energy_std (meV)", "median forces_std", "rho(E_std, F err)",
                 "rho(F_std, F err)", "warned"], rows))
    if args.md_temperature is not None:
        print(f"\nLangevin MD at {args.md_temperature:g} K, up to {args.md_steps} steps:")
        result["md"] = {"temperature_K": args.md_temperature,
                        "runs": md_warnings(args.model, args.md_molecule, args.md_temperature, args.md_seeds,
                                            args.md_steps, out_dir=Path(args.json or ".").parent if args.json else ".")}
    path = write_result(f"uncertainty_{Path(args.model).name}", result, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
