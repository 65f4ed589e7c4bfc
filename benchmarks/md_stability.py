"""How long Langevin MD with a model stays inside its training domain: steps until the calculator refuses.

For each temperature and seed: Langevin MD (``ase_wavecalc.md.run_md``, friction 0.01/fs, 0.5 fs) from the
``ase.build`` geometry, until ``--steps`` or until the model raises ``InputError`` (an atom pair closer than
in training, or the predicted HOMO-LUMO gap collapsed: see ``ModelProvider``). Reported per run: steps
completed and the reason of a stop.
The last ``--keep`` steps before every stop go to ``<out>/edge_frames.traj`` (every ``--every``-th step):
the geometries to label with ``wavecalc generate <out>/edge_frames.traj --geometries`` (active learning).

    python benchmarks/md_stability.py --molecule ethanol --temperatures 300 400 --seeds 1 2 3 4 5 6

Writes benchmarks/results/md_stability_<molecule>.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _common import (DEFAULT_MODELS, MOLECULES, finish_machine_info, machine_info, machine_line, resolve_model,
                     table, write_result)


def first_broken_frame(traj, hold: int = 100) -> int | None:
    """Index of the first trajectory frame from which the molecule differs from the first frame's for ``hold``
    frames in a row (a bond broken or formed: the molecule fell apart or rearranged, which a model's domain checks
    alone would not stop), or None. Bonded: closer than 1.25 x the sum of the covalent radii, each hydrogen on its
    nearest atom only (up to 1.5x); like atoms may trade places (a proton moved to an equivalent site, or shared by
    two oxygens, is the same molecule), and a change that reverts within ``hold`` frames (50 fs at the 0.5-fs
    steps written every step here) does not count (``ase_wavecalc.domain.first_lasting_bond_change``)."""
    from ase.io import read

    from ase_wavecalc.domain import first_lasting_bond_change

    frames = read(traj, ":") if Path(traj).exists() else []
    if not frames:
        return None
    return first_lasting_bond_change(frames[0].numbers, [a.positions for a in frames], hold, 1.25)


def mean_temperature(traj) -> float | None:
    """Mean kinetic temperature (K; ASE counts the 3N - 3 degrees of freedom left by ``FixCom``) over the
    frames of a trajectory after its first 200 (100 fs, the thermostat's time scale at friction 0.01/fs);
    None when shorter. Expected: the bath temperature; higher means kinetic energy is being fed in (a hole
    in the model's energy, or switching between model and reference)."""
    from ase.io import read

    frames = read(traj, "200:") if Path(traj).exists() else []
    return round(float(np.mean([a.get_temperature() for a in frames])), 1) if frames else None


def fit_start(model: str):
    """(Atoms, card name) of the minimum a `wavecalc fit` model's sampling began from (its card's fit.start);
    (None, None) for other models."""
    import json

    from ase_wavecalc.fit.card import fit_start as start_of

    path = Path(model) / "model.json"
    card = json.loads(path.read_text()) if path.is_file() else {}
    atoms = start_of(card)
    return (atoms, card["name"]) if atoms is not None else (None, None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecule", choices=sorted(MOLECULES), default=None,
                        help="start from ase.build's geometry of this molecule (default: ethanol, or for a model "
                             "made by `wavecalc fit` the minimum its sampling began from)")
    parser.add_argument("--model", default=None, help="model name or directory (default: the shipped one)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 400.0], help="K")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=1000, help="MD steps per run (0.5 fs)")
    parser.add_argument("--keep", type=int, default=40, help="steps before a stop kept for labelling")
    parser.add_argument("--every", type=int, default=4, help="keep every N-th of those steps")
    parser.add_argument("--out", default="md_stability", help="directory for trajectories and edge frames")
    parser.add_argument("--out-of-domain", choices=["raise", "reference"], default="raise",
                        help="reference: geometries the model refuses are computed with PySCF and the run goes on "
                             "(counted per run; logged in <out>/reference_T*_s*.traj)")
    parser.add_argument("--compile", choices=["none", "auto"], default="none",
                        help="auto: energy and forces torch.compiled in the background after 200 steps and used once "
                             "checked against the uncompiled ones (as `wavecalc md` does); the same trajectories "
                             "to float32 rounding, ~2x faster per step")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from ase.build import molecule
    from ase.calculators.calculator import CalculationFailed, InputError
    from ase.io import read, write

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.md import run_md

    warnings.filterwarnings("ignore", message=".*semi-quantitative.*", category=UserWarning)
    model = resolve_model(args.model or DEFAULT_MODELS[args.molecule or "ethanol"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atoms, name = fit_start(model) if args.molecule is None else (None, args.molecule)
    if atoms is None:
        name = args.molecule or "ethanol"
        atoms = molecule(MOLECULES[name])
    args.molecule = name
    info = machine_info()
    print(machine_line(info))
    print(f"{args.molecule}: model {model}; Langevin, 0.5 fs, friction 0.01/fs, up to {args.steps} steps per run")
    runs, rows, edges = [], [], []
    compile_ = "auto" if args.compile == "auto" else False
    for temperature in args.temperatures:
        for seed in args.seeds:
            traj = out / f"langevin_T{temperature:g}_s{seed}.traj"
            entry = {"temperature_K": temperature, "seed": seed, "trajectory": str(traj)}
            if args.out_of_domain == "reference":
                log = out / f"reference_T{temperature:g}_s{seed}.traj"
                log.unlink(missing_ok=True)
                calc = WaveCalculator(model=model, out_of_domain="reference", reference_log=str(log),
                                      compile=compile_)
                entry["reference_log"] = str(log)
            else:
                calc = WaveCalculator(model=model, compile=compile_)
            t0 = time.perf_counter()
            try:
                run_md(atoms, calc, ensemble="langevin", temperature=temperature, steps=args.steps, seed=seed,
                       trajectory=str(traj), progress=False, log=None)
                entry.update(steps=args.steps, stopped=False)
            except (InputError, CalculationFailed) as exc:
                frames = read(traj, ":") if traj.exists() else []
                entry.update(steps=max(0, len(frames) - 1), stopped=True, reason=str(exc))
                for k in range(max(0, len(frames) - 1 - args.keep), len(frames), args.every):
                    a = frames[k].copy()
                    a.calc = None
                    a.info = {"run": traj.stem, "step": k}
                    edges.append(a)
            entry["wall_s"] = round(time.perf_counter() - t0, 1)
            if compile_:     # whether the compiled energy+forces had taken over by the run's end
                fast = getattr(getattr(calc, "_provider", None), "fast", None)
                entry["compiled_in_use"] = bool(fast is not None and fast.compiled(atoms.numbers) is not None)
            entry["mean_temperature_K"] = mean_temperature(traj)
            broken = first_broken_frame(traj)
            entry["bonds_intact"] = broken is None
            if broken is not None:     # a run that went on with a broken molecule does not count as completed
                entry["bonds_broken_at_frame"] = broken
                if not entry["stopped"]:
                    entry.update(stopped=True, reason=f"bond graph changed at trajectory frame {broken}")
            if args.out_of_domain == "reference":
                entry["reference_steps"] = int(getattr(calc._provider, "n_reference", 0))  # None if it never loaded
            runs.append(entry)
            short = re.sub(r"^model '[^']*' ", "", entry.get("reason") or "")   # the model is in the header
            rows.append([f"{temperature:g}", seed, entry["steps"], "stopped" if entry["stopped"] else "completed",
                         "-" if entry["mean_temperature_K"] is None else f"{entry['mean_temperature_K']:.0f}",
                         entry.get("reference_steps", "-"), short[:70]])
            print(f"  T {temperature:g} K seed {seed}: {entry['steps']} steps"
                  + (f", stopped: {entry['reason'][:120]}" if entry["stopped"] else ", completed")
                  + (f", {entry['reference_steps']} computed with PySCF" if "reference_steps" in entry else "")
                  + f" ({entry['wall_s']} s" + (", compiled" if entry.get("compiled_in_use") else "") + ")",
                  flush=True)
    if edges:
        write(out / "edge_frames.traj", edges)
    steps = np.array([r["steps"] for r in runs])
    stopped = sum(r["stopped"] for r in runs)
    print()
    print(table(["T (K)", "seed", "steps", "outcome", "<T> (K)", "PySCF steps", "reason"], rows))
    print(f"\n{len(runs) - stopped} of {len(runs)} runs completed {args.steps} steps; median steps "
          f"{np.median(steps):.0f}, min {steps.min()}"
          + (f"; {len(edges)} frames before the stops in {out / 'edge_frames.traj'}" if edges else ""))
    finish_machine_info(info)
    result = {"benchmark": "md_stability", "machine": info, "molecule": args.molecule, "model": model,
              "out_of_domain": args.out_of_domain, "fast_path": calc.parameters.get("fast"),
              "compiled": bool(calc.parameters.get("compile")), "steps_requested": args.steps, "runs": runs, "completed": len(runs) - stopped,
              "median_steps": float(np.median(steps)), "edge_frames": len(edges)}
    path = write_result(f"md_stability_{args.molecule}", result, args.json)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
