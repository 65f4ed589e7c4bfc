"""Wall time of ``refine="scf"`` against PySCF's own guesses, energy + forces through ``WaveCalculator``.

Two uses, each timed call by call in one process (one thread), same conv_tol for all (the card's):

* independent geometries (held-out test frames, a fresh calculator per frame): PySCF from its default
  guess (minao) against ``refine="scf"`` (PySCF from the model's density);
* a trajectory (consecutive frames of an ASE Langevin run on the model, one calculator for the run):
  PySCF, which starts each SCF from the previous frame's density, against ``refine="scf"``, which always
  starts from the model's.

Each row: SCF cycles, seconds in the SCF, in the gradient, in the model, and the whole call (medians).

    python benchmarks/refine_speed.py --molecule ethanol --frames 6 --trajectory-steps 6
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings

import numpy as np

from _common import ROOT, machine_info, machine_line, table, write_result


def _test_geometries(molecule: str, n: int):
    """(numbers, [positions in Angstrom]) of the first ``n`` test frames of the shipped model's card."""
    name = f"{molecule}-pbe-def2svp"
    card = json.loads((ROOT / "models" / name / "model.json").read_text())
    split = card["split"]["datasets"][0]
    parts = sorted((ROOT / "data" / f"{molecule}_pbe_def2svp").glob("part-*.npz"))
    pos, numbers = [], None
    for p in parts:
        with np.load(p) as z:
            numbers = z["numbers"]
            pos.append(z["positions"])
    pos = np.concatenate(pos)
    return name, card, numbers, [pos[int(f)] for f in split["test_frames"][:n]]


def _call(calc, numbers, positions) -> dict:
    from ase import Atoms

    atoms = Atoms(numbers=numbers, positions=positions)
    atoms.calc = calc
    t0 = time.perf_counter()
    atoms.get_forces()
    wall = time.perf_counter() - t0
    info = getattr(calc._result, "info", None) or {}      # the provider's HamiltonianResult.info
    return {"wall_s": wall, "cycles": calc.scf_cycles, "scf_s": info.get("scf_seconds"),
            "gradient_s": info.get("gradient_seconds"), "model_s": info.get("model_seconds", 0.0),
            "guess": info.get("initial_guess")}


def _summary(rows: list[dict]) -> dict:
    out = {"n": len(rows)}
    for k in ("wall_s", "cycles", "scf_s", "gradient_s", "model_s"):
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = statistics.median(vals) if vals else None
    return out


def run(molecule: str, n_frames: int, traj_steps: int, log=print) -> dict:
    from ase import Atoms
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from ase_wavecalc import WaveCalculator

    name, card, numbers, geoms = _test_geometries(molecule, n_frames)
    level = card["level_of_theory"]
    conv_tol = float(level.get("conv_tol") or 1e-10)
    kw = dict(method=level.get("xc") or level.get("method"), basis=level["basis"], conv_tol=conv_tol)
    res = {"model": name, "conv_tol": conv_tol, "independent": {}, "trajectory": {}}
    rows = {"pyscf (minao)": [], "refine='scf'": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k, pos in enumerate(geoms):            # interleaved: a loaded machine slows both alike
            rows["pyscf (minao)"].append(_call(WaveCalculator(**kw), numbers, pos))
            rows["refine='scf'"].append(_call(WaveCalculator(model=name, refine="scf"), numbers, pos))
            log(f"  frame {k}: " + ", ".join(f"{g} {r[-1]['wall_s']:.2f} s ({r[-1]['cycles']} cycles)"
                                               for g, r in rows.items()))
        res["independent"] = {g: {"summary": _summary(r), "calls": r} for g, r in rows.items()}

        # a trajectory on the model (cheap), then both references along it, one calculator each
        atoms = Atoms(numbers=numbers, positions=geoms[0])
        atoms.calc = WaveCalculator(model=name)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
        dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(2))
        traj = []
        for _ in range(traj_steps):
            dyn.run(1)
            traj.append(atoms.positions.copy())
        trows = {"pyscf (previous density)": [], "refine='scf'": []}
        calcs = {"pyscf (previous density)": WaveCalculator(**kw),
                 "refine='scf'": WaveCalculator(model=name, refine="scf")}
        for pos in traj:
            for g, calc in calcs.items():
                trows[g].append(_call(calc, numbers, pos))
        res["trajectory"] = {g: {"summary": _summary(r[1:]), "calls": r} for g, r in trows.items()}   # the first
        # call of the PySCF calculator has no previous density: left out of the medians
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--molecule", default="ethanol", choices=["water", "ethanol"])
    ap.add_argument("--frames", type=int, default=6)
    ap.add_argument("--trajectory-steps", type=int, default=6)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    info = machine_info()
    res = run(args.molecule, args.frames, args.trajectory_steps)
    res["machine"] = info
    print(machine_line(info))
    for use in ("independent", "trajectory"):
        print(f"\n{res['model']}, energy + forces, {use} geometries (medians, conv_tol {res['conv_tol']:g}):")
        rows = []
        for g, v in res[use].items():
            s = v["summary"]
            fmt = (lambda x: "-" if x is None else f"{x:.2f}")
            rows.append([g, s["n"], fmt(s["cycles"]), fmt(s["scf_s"]), fmt(s["gradient_s"]), fmt(s["model_s"]),
                         fmt(s["wall_s"])])
        print(table(["start", "calls", "cycles", "SCF s", "gradient s", "model s", "call s"], rows))
    write_result(f"refine_speed_{args.molecule}", res, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
