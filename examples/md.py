"""Molecular dynamics of water or ethanol with the trained model: NVE and Langevin.

Runs ``ase_wavecalc.md.run_md`` (velocity Verlet for NVE, ASE's Langevin thermostat), writes one trajectory
per ensemble to ``--out`` and prints the total-energy drift (the NVE drift measures how well the model's
forces are the gradient of its energy and how smooth that energy is; in the Langevin run the total energy
is not conserved by construction, its drift is printed for reference only).

    python examples/md.py --molecule water --steps 200
    python examples/md.py --molecule ethanol --ensemble nve --steps 1000 --timestep 0.5 --out runs_md
    python examples/md.py --molecule water --model /path/to/model --dtype float32

Outputs: ``md_<molecule>_<ensemble>.traj`` (ASE trajectory, every ``--interval`` steps) and
``md_<molecule>.json`` (settings, per-ensemble drift, timing).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from _common import DEFAULT_MODELS, MOLECULES, model_calculator, out_dir, resolve_model, threads_note


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecule", choices=sorted(MOLECULES), default="water")
    parser.add_argument("--model", default=None, help="model name or directory (default: the shipped model of "
                                                       "the molecule, water-pbe-def2svp / ethanol-pbe-def2svp)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="network precision")
    parser.add_argument("--ensemble", choices=["nve", "langevin", "both"], default="both")
    parser.add_argument("--steps", type=int, default=200, help="MD steps per ensemble")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K (NVE: the start over the 3N - 6 vibrational degrees of freedom, which settle "
                             "near half of it from a minimum; Langevin: the bath)")
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument("--interval", type=int, default=1, help="write every N-th frame")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-of-domain", choices=["raise", "reference"], default="raise",
                        help="a geometry outside the model's training domain stops the run (raise), or is computed "
                             "with PySCF and the run goes on (reference; logged in md_<molecule>_<ensemble>_reference.traj)")
    parser.add_argument("--out", default=".", help="output directory")
    args = parser.parse_args(argv)

    from ase.build import molecule
    from ase.calculators.calculator import CalculationFailed, InputError

    from ase_wavecalc.md import run_md

    model = args.model or DEFAULT_MODELS[args.molecule]
    out = out_dir(args.out)
    atoms = molecule(MOLECULES[args.molecule])
    ensembles = ["nve", "langevin"] if args.ensemble == "both" else [args.ensemble]
    print(f"{args.molecule} ({atoms.get_chemical_formula()}), model {resolve_model(model)} ({args.dtype}); "
          f"{threads_note()}")
    summary = {"molecule": args.molecule, "model": model, "dtype": args.dtype, "timestep_fs": args.timestep,
               "steps": args.steps, "temperature_K": args.temperature, "runs": {}}
    for ensemble in ensembles:
        traj = out / f"md_{args.molecule}_{ensemble}.traj"
        reference_log = out / f"md_{args.molecule}_{ensemble}_reference.traj"
        if args.out_of_domain == "reference":
            reference_log.unlink(missing_ok=True)
            calc = model_calculator(model, args.dtype, out_of_domain="reference", reference_log=str(reference_log))
        else:
            calc = model_calculator(model, args.dtype)
        warm = atoms.copy()
        warm.calc = calc
        try:
            warm.get_forces()  # load the model and warm up outside the timed run
            t0 = time.perf_counter()
            rec = run_md(atoms, calc, ensemble=ensemble, temperature=args.temperature, timestep=args.timestep,
                         steps=args.steps, friction=args.friction, seed=args.seed, trajectory=str(traj),
                         interval=args.interval, progress=sys.stderr.isatty())
        except (InputError, CalculationFailed) as exc:
            # the calculator refused a geometry (outside the model's training domain): report, keep the
            # trajectory written so far, go on with the next ensemble
            from ase.io import read

            done = max(0, len(read(traj, ":")) - 1) if traj.exists() else 0
            print(f"{ensemble}: stopped after {done * args.interval} of {args.steps} steps: {exc}")
            summary["runs"][ensemble] = {"trajectory": str(traj), "stopped_after_steps": done * args.interval,
                                         "error": f"{type(exc).__name__}: {exc}"}
            continue
        summary["runs"][ensemble] = {
            "trajectory": str(traj), "wall_s": round(time.perf_counter() - t0, 2),
            "ms_per_step": float(rec["ms_per_step"]),
            # NVE only (run_md reports no drift under a thermostat): NaN for Langevin
            "drift_meV_per_atom": float(rec.get("drift_meV_per_atom", float("nan"))),
            "max_deviation_meV_per_atom": float(rec.get("max_deviation_meV_per_atom", float("nan"))),
            "drift_meV_per_atom_per_ps": float(rec.get("drift_meV_per_atom_per_ps", float("nan"))),
            "mean_temperature_K": float(rec["temperature_K"].mean()),
            "degrees_of_freedom": int(rec["degrees_of_freedom"]),
            "etot_start_eV": float(rec["etot_eV"][0]), "etot_end_eV": float(rec["etot_eV"][-1]),
        }
        n_reference = getattr(calc.provider, "n_reference", None)
        if n_reference is not None:
            summary["runs"][ensemble]["reference_steps"] = int(n_reference)
            print(f"{ensemble}: {n_reference} of {args.steps + 1} geometries outside the model's domain were "
                  f"computed with PySCF" + (f" (in {reference_log})" if n_reference else ""))
    print()
    print(f"{'ensemble':<10}{'steps':>7}{'ms/step':>10}{'<T> K':>9}{'drift meV/atom':>16}{'max dev meV/atom':>18}"
          f"{'slope meV/atom/ps':>19}")
    for ensemble, r in summary["runs"].items():
        if "error" in r:
            print(f"{ensemble:<10}{r['stopped_after_steps']:>7}  stopped: {r['error'][:80]}")
            continue
        if ensemble == "nve":
            drift = (f"{r['drift_meV_per_atom']:>16.4f}{r['max_deviation_meV_per_atom']:>18.4f}"
                     f"{r['drift_meV_per_atom_per_ps']:>19.4f}")
        else:
            drift = f"{'-':>16}{'-':>18}{'-':>19}"
        print(f"{ensemble:<10}{args.steps:>7}{r['ms_per_step']:>10.1f}{r['mean_temperature_K']:>9.1f}{drift}")
    if "langevin" in summary["runs"]:
        print("(Langevin: a thermostat exchanges energy with the bath, so it has no energy drift)")
    path = out / f"md_{args.molecule}.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary written to {path}")
    return 1 if any("error" in r for r in summary["runs"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
