"""Geometry optimization of ethanol: the trained model against PySCF PBE/def2-SVP.

Both start from the same perturbed ``ase.build.molecule("CH3CH2OH")`` and run ASE's BFGS to ``--fmax``.
The reference is ``WaveCalculator(method="pbe", basis="def2-svp")``, i.e. PySCF's own SCF energies and
analytic gradients at the level of theory the model was trained on. Printed: both final energies (and the
PySCF energy at the model's minimum, i.e. how much higher the model's geometry lies on the true surface),
the RMSD between the two optimized geometries after optimal translation + rotation (Kabsch), and every
bond length.

    python examples/optimize_ethanol.py                         # shipped model, then PySCF (a few minutes)
    python examples/optimize_ethanol.py --model DIR --steps 50 --pyscf-steps 30 --out opt

Outputs in ``--out``: ``opt_ethanol_model.traj``, ``opt_ethanol_pyscf.traj`` (optimizer steps),
``opt_ethanol_model.xyz``, ``opt_ethanol_pyscf.xyz`` (final geometries), ``opt_ethanol.json``, and
``opt_ethanol_pyscf.json`` (the reference run, reused by later runs with the same start and settings).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import (DEFAULT_MODELS, bond_label, bonds, kabsch_rmsd, model_calculator, out_dir, pyscf_calculator,
                     resolve_model, threads_note)


def optimize(atoms, calc, fmax, steps, traj, label):
    """BFGS; returns (atoms, info). Stops cleanly (converged=False) if the calculator rejects a geometry."""
    from ase.calculators.calculator import CalculationFailed, InputError
    from ase.optimize import BFGS

    atoms = atoms.copy()
    atoms.calc = calc
    opt = BFGS(atoms, trajectory=str(traj), logfile="-")
    t0 = time.perf_counter()
    error = None
    try:
        converged = bool(opt.run(fmax=fmax, steps=steps))
    except (InputError, CalculationFailed) as exc:
        converged, error = False, f"{type(exc).__name__}: {exc}"
        print(f"{label}: optimization stopped: {error}")
    wall = time.perf_counter() - t0
    info = {"converged": converged, "steps": int(opt.nsteps), "wall_s": round(wall, 2),
            "s_per_step": wall / max(opt.nsteps + 1, 1), "error": error}
    if error is None:
        info["energy_eV"] = float(atoms.get_potential_energy())
        info["fmax_eV_per_A"] = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    return atoms, info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODELS["ethanol"], help="model name or directory")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--fmax", type=float, default=0.01, help="convergence, max force in eV/Angstrom")
    parser.add_argument("--steps", type=int, default=300, help="max BFGS steps with the model")
    parser.add_argument("--pyscf-steps", type=int, default=100, help="max BFGS steps with PySCF (0: skip)")
    # 0.03 A: the models were trained on 300-500 K MD; a 0.05 A rattle (seed 1) stretches O-H to 1.125 A,
    # past every training geometry (max 1.118 A), where the ethanol model's forces are poor
    parser.add_argument("--perturb", type=float, default=0.03, help="std. dev. of the random start "
                                                                    "displacements, Angstrom")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=".", help="output directory")
    args = parser.parse_args(argv)

    from ase.build import molecule
    from ase.io import write

    out = out_dir(args.out)
    start = molecule("CH3CH2OH")
    start.rattle(stdev=args.perturb, seed=args.seed)
    print(f"ethanol, start = ase.build.molecule('CH3CH2OH') + N(0, {args.perturb} A) displacements; "
          f"model {resolve_model(args.model)}; {threads_note()}")

    print("\n== model ==")
    model_atoms, model_info = optimize(start, model_calculator(args.model, args.dtype), args.fmax, args.steps,
                                       out / "opt_ethanol_model.traj", "model")
    write(out / "opt_ethanol_model.xyz", model_atoms)
    result = {"model": args.model, "dtype": args.dtype, "fmax": args.fmax, "perturb_A": args.perturb,
              "seed": args.seed, "model_opt": model_info}

    ref_atoms = None
    if args.pyscf_steps > 0:
        print("\n== PySCF PBE/def2-SVP (reference) ==")
        # the reference optimization does not depend on the model: a finished one with the same start and
        # settings in --out is reused (it takes minutes)
        settings = {"perturb_A": args.perturb, "seed": args.seed, "fmax": args.fmax, "steps": args.pyscf_steps}
        cache = out / "opt_ethanol_pyscf.json"
        cached = json.loads(cache.read_text()) if cache.is_file() else None
        if cached is not None and cached.get("settings") == settings and (out / "opt_ethanol_pyscf.xyz").is_file():
            from ase.io import read

            ref_atoms, ref_info = read(out / "opt_ethanol_pyscf.xyz"), cached["info"]
            print(f"reusing {cache} (same start and settings)")
        else:
            ref_atoms, ref_info = optimize(start, pyscf_calculator(), args.fmax, args.pyscf_steps,
                                           out / "opt_ethanol_pyscf.traj", "pyscf")
            write(out / "opt_ethanol_pyscf.xyz", ref_atoms)
            cache.write_text(json.dumps({"settings": settings, "info": ref_info}, indent=2) + "\n")
        result["pyscf_opt"] = ref_info
        if model_info["error"] is None:
            probe = model_atoms.copy()
            probe.calc = pyscf_calculator()
            try:
                result["pyscf_energy_at_model_minimum_eV"] = float(probe.get_potential_energy())
            except Exception as exc:  # noqa: BLE001 (report, do not stop the example)
                print(f"PySCF at the model's geometry failed: {exc}")

    print("\n== results ==")
    print(f"{'':<34}{'model':>16}{'PySCF':>16}")
    row = lambda name, a, b, fmt: print(f"{name:<34}{fmt(a):>16}{fmt(b):>16}")  # noqa: E731
    num = lambda f: (lambda v: "-" if v is None else format(v, f))  # noqa: E731
    ref_info = result.get("pyscf_opt", {})
    row("converged", model_info["converged"], ref_info.get("converged"), lambda v: "-" if v is None else str(v))
    row("BFGS steps", model_info["steps"], ref_info.get("steps"), num("d"))
    row("seconds per step", model_info["s_per_step"], ref_info.get("s_per_step"), num(".3f"))
    row("final energy (eV)", model_info.get("energy_eV"), ref_info.get("energy_eV"), num(".6f"))
    row("final max force (eV/A)", model_info.get("fmax_eV_per_A"), ref_info.get("fmax_eV_per_A"), num(".4f"))
    if "pyscf_energy_at_model_minimum_eV" in result and "energy_eV" in ref_info:
        de = 1e3 * (result["pyscf_energy_at_model_minimum_eV"] - ref_info["energy_eV"])
        result["pyscf_energy_penalty_meV"] = de
        print(f"PySCF energy at the model's optimized geometry - at PySCF's: {de:+.3f} meV")
    if "energy_eV" in model_info and "energy_eV" in ref_info:
        result["energy_difference_meV"] = 1e3 * (model_info["energy_eV"] - ref_info["energy_eV"])
        print(f"model - PySCF energy, each at its own optimized geometry: {result['energy_difference_meV']:+.3f} meV")

    if ref_atoms is not None and model_info["error"] is None:
        rmsd, _ = kabsch_rmsd(ref_atoms.positions, model_atoms.positions)
        rmsd_start, _ = kabsch_rmsd(ref_atoms.positions, start.positions)
        result["rmsd_A"] = rmsd
        result["rmsd_start_vs_pyscf_A"] = rmsd_start
        print(f"RMSD model vs PySCF geometry (aligned): {rmsd:.4f} A   (start vs PySCF: {rmsd_start:.4f} A)")
        print(f"\n{'bond':<10}{'model A':>10}{'PySCF A':>10}{'diff mA':>10}")
        table = []
        for i, j in bonds(ref_atoms):
            dm, dr = model_atoms.get_distance(i, j), ref_atoms.get_distance(i, j)
            table.append({"bond": bond_label(ref_atoms, i, j), "model_A": dm, "pyscf_A": dr})
            print(f"{bond_label(ref_atoms, i, j):<10}{dm:>10.4f}{dr:>10.4f}{1e3 * (dm - dr):>+10.1f}")
        diffs = [abs(b["model_A"] - b["pyscf_A"]) for b in table]
        result["bonds"] = table
        result["bond_mae_mA"] = 1e3 * float(np.mean(diffs)) if diffs else None
        print(f"bond-length MAE {result['bond_mae_mA']:.2f} mA")
    elif model_info["error"] is None:
        print(f"\n{'bond':<10}{'model A':>10}")
        for i, j in bonds(model_atoms):
            print(f"{bond_label(model_atoms, i, j):<10}{model_atoms.get_distance(i, j):>10.4f}")

    path = out / "opt_ethanol.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"summary written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
