"""``wavecalc md``: molecular dynamics with :class:`~ase_wavecalc.WaveCalculator`.

Runs NVE (velocity Verlet) or Langevin dynamics from a molecule name (``ase.build.molecule``) or a
structure file, writes every frame to an ASE trajectory as it goes (an interrupted run keeps all
frames written so far) and prints the total-energy drift at the end.

| quantity | unit |
|---|---|
| time step | fs |
| temperature | K |
| energies printed | eV |
| drift | meV/atom over the run, and meV/atom/ps |
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .sampling import langevin, load_structure, start_velocities

__all__ = ["load_structure", "make_calculator", "run_md", "add_cli_arguments", "cli_main"]


def make_calculator(args):
    from .calculator import WaveCalculator

    if args.model:
        return WaveCalculator(model=args.model, dtype=args.dtype,
                              out_of_domain=getattr(args, "out_of_domain", "raise"),
                              reference_log=getattr(args, "reference_log", None))
    return WaveCalculator(method=args.method, basis=args.basis)


def run_md(atoms, calc, ensemble="nve", temperature=300.0, timestep=0.5, steps=200, friction=0.01,
           seed=0, trajectory=None, interval=1, log="stdout", progress=True, properties=()):
    """Run MD on ``atoms`` with ``calc``; returns a dict with times (fs) and energies (eV) per frame.

    ``properties=("dipole",)`` also records the dipole (e*Angstrom, (T, 3) under "dipole") of every frame
    and writes it to the trajectory (a readout model computes its density for it each step). A model with a
    committee adds "energy_std_eV" (its energy spread, eV, per frame); the trajectory keeps it as each
    frame's ``atoms.info["energy_std"]``.

    Velocities start from a Maxwell-Boltzmann distribution at ``temperature`` with zero total momentum
    and angular momentum; ``seed`` makes the run reproducible. Langevin is ``sampling.langevin`` (the centre
    of mass fixed by ``FixCom``; the reported temperature then counts 3N - 3 degrees of freedom).
    """
    from ase import units
    from ase.io import Trajectory
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    rng = np.random.default_rng(seed)
    start_velocities(atoms, temperature, rng)
    if ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep * units.fs)
    elif ensemble == "langevin":
        dyn = langevin(atoms, timestep, temperature, friction, rng)
    else:
        raise ValueError(f"unknown ensemble {ensemble!r}: use 'nve' or 'langevin'")

    if log == "stdout":   # looked up at call time: a stream captured when the module was imported may be closed
        log = sys.stdout
    unknown = [p for p in properties if p != "dipole"]
    if unknown:
        raise ValueError(f"run_md records the dipole besides the energies; not {unknown}")
    record = {"time_fs": [], "epot_eV": [], "ekin_eV": [], "etot_eV": [], "temperature_K": []}
    if "dipole" in properties:
        record["dipole"] = []

    def observe():
        if "dipole" in properties:
            record["dipole"].append(atoms.get_dipole_moment())
        epot = atoms.get_potential_energy()
        ekin = atoms.get_kinetic_energy()
        record["time_fs"].append(dyn.get_time() / units.fs)
        record["epot_eV"].append(epot)
        record["ekin_eV"].append(ekin)
        record["etot_eV"].append(epot + ekin)
        record["temperature_K"].append(atoms.get_temperature())
        if "energy_std" in atoms.info:   # a committee's spread (WaveCalculator puts it there)
            record.setdefault("energy_std_eV", [np.nan] * (len(record["time_fs"]) - 1))
        if "energy_std_eV" in record:
            record["energy_std_eV"].append(float(atoms.info.get("energy_std", np.nan)))

    dyn.attach(observe, interval=1)
    traj = None
    if trajectory:
        traj = Trajectory(trajectory, "w", atoms)
        dyn.attach(traj.write, interval=interval)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"MD {ensemble}", unit="step", file=sys.stderr)
        dyn.attach(lambda: bar.update(1) if dyn.nsteps > 0 else None, interval=1)
    start = time.perf_counter()
    try:
        dyn.run(steps)
    finally:
        if traj is not None:
            traj.close()
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    out = {k: np.asarray(v) for k, v in record.items()}
    n = len(atoms)
    etot = out["etot_eV"]
    duration_ps = (out["time_fs"][-1] - out["time_fs"][0]) / 1000.0 if len(etot) > 1 else 0.0
    out["wall_s"] = wall
    out["ms_per_step"] = 1e3 * wall / max(steps, 1)
    out["drift_meV_per_atom"] = 1e3 * (etot[-1] - etot[0]) / n
    out["max_deviation_meV_per_atom"] = 1e3 * np.abs(etot - etot[0]).max() / n
    if duration_ps > 0:
        slope = np.polyfit(out["time_fs"] / 1000.0, etot, 1)[0]
        out["drift_meV_per_atom_per_ps"] = 1e3 * slope / n
    if log is not None:
        print(f"{ensemble.upper()} MD: {steps} steps of {timestep} fs, {n} atoms, {wall:.1f} s "
              f"({out['ms_per_step']:.1f} ms/step)", file=log)
        print(f"  mean temperature {out['temperature_K'].mean():.1f} K", file=log)
        print(f"  total energy: start {etot[0]:.6f} eV, end {etot[-1]:.6f} eV", file=log)
        print(f"  drift {out['drift_meV_per_atom']:+.4f} meV/atom, max deviation "
              f"{out['max_deviation_meV_per_atom']:.4f} meV/atom"
              + (f", fitted slope {out['drift_meV_per_atom_per_ps']:+.4f} meV/atom/ps" if duration_ps else ""),
              file=log)
        if "energy_std_eV" in out and np.isfinite(out["energy_std_eV"]).any():
            print(f"  committee energy spread: mean {1e3 * np.nanmean(out['energy_std_eV']):.2f} meV, max "
                  f"{1e3 * np.nanmax(out['energy_std_eV']):.2f} meV", file=log)
        if trajectory:
            print(f"  trajectory written to {trajectory}" + (" (each frame's atoms.info['energy_std'] in eV)"
                                                             if "energy_std_eV" in out else ""), file=log)
    return out


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("structure", help="molecule name (ase.build.molecule, e.g. H2O) or structure file")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", help="shipped model name or model directory (default: water-pbe-def2svp "
                                     "for water, ethanol-pbe-def2svp for ethanol)")
    src.add_argument("--pyscf", action="store_true", help="run the exact PySCF SCF instead of a model")
    parser.add_argument("--method", default="pbe", help="PySCF method with --pyscf (xc name or 'hf')")
    parser.add_argument("--basis", default="def2-svp", help="PySCF basis with --pyscf")
    parser.add_argument("--ensemble", choices=["nve", "langevin"], default="nve")
    parser.add_argument("--temperature", type=float, default=300.0, help="initial/bath temperature, K")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--trajectory", default="md.traj", help="output trajectory ('' for none)")
    parser.add_argument("--interval", type=int, default=1, help="write every N-th frame")
    parser.add_argument("--out-of-domain", choices=["raise", "reference"], default="raise",
                        help="a geometry outside the model's training domain: stop the run (raise), or compute "
                             "it with PySCF at the model's level of theory and go on (reference; seconds a step)")
    parser.add_argument("--reference-log", default=None,
                        help="with --out-of-domain reference: ASE trajectory collecting those geometries with "
                             "their PySCF energies and forces (appended to an existing file; label them with "
                             "wavecalc generate --geometries)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for molecules this small; 0: torch's default)")


def _default_model(atoms) -> str:
    formula = atoms.get_chemical_formula(mode="hill")
    return {"H2O": "water-pbe-def2svp", "C2H6O": "ethanol-pbe-def2svp"}.get(formula, "")


def cli_main(args) -> int:
    if args.threads > 0:  # a command-line entry point may set process-wide state; library code never does
        import torch

        torch.set_num_threads(args.threads)
    atoms = load_structure(args.structure)
    if not args.pyscf and not args.model:
        args.model = _default_model(atoms)
        if not args.model:
            print("wavecalc md: no shipped model for this molecule; pass --model or --pyscf", file=sys.stderr)
            return 2
    if args.pyscf:
        args.model = None
    if getattr(args, "reference_log", None) and getattr(args, "out_of_domain", "raise") != "reference":
        print("wavecalc md: --reference-log collects the geometries of --out-of-domain reference; give both",
              file=sys.stderr)
        return 2
    if args.pyscf and getattr(args, "out_of_domain", "raise") != "raise":
        print("wavecalc md: --out-of-domain applies to a model; --pyscf has no training domain", file=sys.stderr)
        return 2
    calc = make_calculator(args)
    from ase.calculators.calculator import CalculationFailed, InputError

    from ase.calculators.calculator import PropertyNotImplementedError

    try:   # the first calculation loads the model and checks the start: before any file is opened
        probe = atoms.copy()
        probe.calc = calc
        probe.get_forces()
        try:   # the orbitals too (a readout model's energy does not need them): its predicted gap
            probe.get_dipole_moment()
        except PropertyNotImplementedError:   # a network trained on energies alone has none
            pass
    except (InputError, CalculationFailed) as exc:
        print(f"wavecalc md: cannot start: {exc}", file=sys.stderr)
        return 2
    try:
        run_md(atoms, calc, ensemble=args.ensemble, temperature=args.temperature, timestep=args.timestep,
               steps=args.steps, friction=args.friction, seed=args.seed, trajectory=args.trajectory or None,
               interval=args.interval)
    except (InputError, CalculationFailed) as exc:
        # e.g. the model refused a geometry outside its training domain: say so; the trajectory written
        # so far stays on disk
        kept = ""
        if args.trajectory and os.path.isfile(args.trajectory):
            from ase.io import read

            kept = f"; the {len(read(args.trajectory, ':'))} frames written so far are in {args.trajectory}"
        print(f"wavecalc md: stopped: {exc}{kept}", file=sys.stderr)
        return 1
    n_reference = getattr(calc.provider, "n_reference", None)
    if n_reference is not None:
        print(f"  {n_reference} of {args.steps + 1} geometries were outside the model's domain and computed with "
              f"PySCF" + (f" (appended to {args.reference_log})" if args.reference_log and n_reference else ""))
    return 0
