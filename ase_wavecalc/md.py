"""``wavecalc md``: molecular dynamics with :class:`~ase_wavecalc.WaveCalculator`.

Runs NVE (velocity Verlet) or Langevin dynamics from a molecule name (``ase.build.molecule``) or a
structure file, writes every frame to an ASE trajectory as it goes (an interrupted run keeps all
frames written so far) and prints the temperatures at the end and, for NVE, the total-energy drift (under
a thermostat the total energy is exchanged with the bath, so no drift is reported).

Temperatures are kinetic temperatures over the degrees of freedom that hold energy
(:func:`degrees_of_freedom`): 3N - 6 (3N - 5 for a linear molecule) in NVE, which starts without net
momentum and rotation and conserves both; 3N - 3 in Langevin, whose bath also turns the molecule but whose
centre of mass is fixed. The run starts at exactly the requested temperature over them. An NVE run from a
minimum settles near half its starting temperature (equipartition: the kinetic energy shares with the
potential energy of the vibrations).

With ``--model`` the calculator is ``WaveCalculator(model=..., compile="auto")``: a readout model's energy and
forces are torch.compiled in a background thread after 200 calls of the molecule, and the run switches to
the compiled function once it has reproduced the uncompiled one (``model/compiled.py``; the library default
is ``compile=False``).

| quantity | unit |
|---|---|
| time step | fs |
| temperature | K |
| energies printed | eV |
| drift (NVE) | meV/atom over the run, and meV/atom/ps |
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .sampling import langevin, load_structure

__all__ = ["load_structure", "make_calculator", "run_md", "degrees_of_freedom", "start_md_velocities",
           "add_cli_arguments", "cli_main"]


def make_calculator(args):
    from .calculator import WaveCalculator

    if args.model:
        return WaveCalculator(model=args.model, dtype=args.dtype, compile="auto",   # module docstring
                              out_of_domain=getattr(args, "out_of_domain", "raise"),
                              reference_log=getattr(args, "reference_log", None))
    return WaveCalculator(method=args.method, basis=args.basis)


def degrees_of_freedom(atoms, ensemble: str) -> int:
    """The kinetic degrees of freedom of ``atoms`` in a ``run_md`` run of ``ensemble``.

    NVE without constraints: 3N - 6, or 3N - 5 for a linear molecule (smallest principal moment of inertia
    below 1e-6 of the largest): the run starts without net momentum and rotation, and the forces of an
    isolated molecule conserve both. Langevin without constraints: 3N - 3 (the centre of mass is fixed by
    ``FixCom``; the bath's random kicks turn the molecule, so rotation holds energy). With constraints of the
    user's: what ASE counts for them (``atoms.get_number_of_degrees_of_freedom()``). Never below 0."""
    n = len(atoms)
    if atoms.constraints:
        return max(int(atoms.get_number_of_degrees_of_freedom()), 0)
    if ensemble == "langevin":
        return max(3 * n - 3, 0)
    if n < 2:
        return 0
    moments = atoms.get_moments_of_inertia()
    linear = moments.min() < 1e-6 * moments.max()
    return max(3 * n - (5 if linear else 6), 0)


def start_md_velocities(atoms, temperature: float, rng, ensemble: str) -> int:
    """Start velocities at exactly ``temperature`` (K) over the degrees of freedom of the run; returns their
    number (:func:`degrees_of_freedom`).

    Maxwell-Boltzmann momenta from ``rng``; without constraints, no net momentum and (NVE, where it is
    conserved) no rotation; then all velocities scaled so that 2 E_kin / (n_dof k_B) = ``temperature``. So a
    water molecule in NVE at 300 K starts with 3/2 k_B x 300 K of kinetic energy in its 3 vibrations,
    not with what 9 Cartesian degrees of freedom at 300 K would give before the rigid motions were taken out."""
    from ase import units
    from ase.md import velocitydistribution as vd

    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution  # ASE 3.29 name
    thermalize(atoms, temperature_K=temperature, rng=rng)
    if not atoms.constraints:
        vd.Stationary(atoms, preserve_temperature=False)
        if ensemble == "nve":
            vd.ZeroRotation(atoms, preserve_temperature=False)
    n_dof = degrees_of_freedom(atoms, ensemble)
    ekin = atoms.get_kinetic_energy()
    if ekin > 0 and temperature > 0 and n_dof > 0:
        atoms.set_momenta(atoms.get_momenta() * np.sqrt(0.5 * n_dof * units.kB * temperature / ekin))
    return n_dof


def run_md(atoms, calc, ensemble="nve", temperature=300.0, timestep=0.5, steps=200, friction=0.01,
           seed=0, trajectory=None, interval=1, log="stdout", progress=True, properties=()):
    """Run MD on ``atoms`` with ``calc``; returns a dict with times (fs) and energies (eV) per frame.

    ``properties=("dipole",)`` also records the dipole (e*Angstrom, (T, 3) under "dipole") of every frame
    and writes it to the trajectory (a readout model computes its density for it each step). A model with a
    committee adds "energy_std_eV" (its energy spread, eV, per frame); the trajectory keeps it as each
    frame's ``atoms.info["energy_std"]``.

    Velocities start at exactly ``temperature`` over the run's degrees of freedom (:func:`start_md_velocities`:
    Maxwell-Boltzmann, no net momentum, in NVE no rotation); ``seed`` makes the run reproducible.
    "temperature_K" (per frame) is the kinetic temperature over those degrees of freedom ("degrees_of_freedom":
    3N - 6 in NVE, 3N - 5 linear; 3N - 3 in Langevin). Langevin is ``sampling.langevin`` (the centre of mass
    fixed by ``FixCom``). From a minimum an NVE run settles near half its starting temperature
    (equipartition). Only NVE reports a total-energy drift ("drift_meV_per_atom",
    "max_deviation_meV_per_atom", "drift_meV_per_atom_per_ps"): under a thermostat the total energy is
    exchanged with the bath.
    """
    from ase import units
    from ase.io import Trajectory
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calc
    if ensemble not in ("nve", "langevin"):
        raise ValueError(f"unknown ensemble {ensemble!r}: use 'nve' or 'langevin'")
    rng = np.random.default_rng(seed)
    constrained = bool(atoms.constraints)    # the user's own (Langevin adds FixCom to atoms without)
    n_dof = start_md_velocities(atoms, temperature, rng, ensemble)
    if ensemble == "nve":
        dyn = VelocityVerlet(atoms, timestep * units.fs)
    else:
        dyn = langevin(atoms, timestep, temperature, friction, rng)

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
        record["temperature_K"].append(2.0 * ekin / (n_dof * units.kB) if n_dof else 0.0)
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
    out["degrees_of_freedom"] = n_dof
    if ensemble == "nve":   # under a thermostat the total energy is exchanged with the bath: no drift
        out["drift_meV_per_atom"] = 1e3 * (etot[-1] - etot[0]) / n
        out["max_deviation_meV_per_atom"] = 1e3 * np.abs(etot - etot[0]).max() / n
        if duration_ps > 0:
            slope = np.polyfit(out["time_fs"] / 1000.0, etot, 1)[0]
            out["drift_meV_per_atom_per_ps"] = 1e3 * slope / n
    if log is not None:
        temps = out["temperature_K"]
        counted = ("with the constraints" if constrained else "3N - 3: the centre of mass fixed"
                   if ensemble == "langevin" else f"3N - {3 * n - n_dof}: the centre of mass and rotation at rest")
        print(f"{ensemble.upper()} MD: {steps} steps of {timestep} fs, {n} atoms, {wall:.1f} s "
              f"({out['ms_per_step']:.1f} ms/step)", file=log)
        print(f"  temperature: start {temps[0]:.1f} K, mean {temps.mean():.1f} K"
              + (f" (bath {temperature:g} K)" if ensemble == "langevin" else "")
              + f", over {n_dof} degrees of freedom ({counted})", file=log)
        if ensemble == "nve":
            print("  (from a minimum, NVE settles near half its starting temperature: the kinetic energy shares "
                  "with the potential energy)", file=log)
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
                                     "for water, ethanol-pbe-def2svp for ethanol); its energy and forces are "
                                     "torch.compiled in the background after 200 steps and used once checked "
                                     "against the uncompiled ones")
    src.add_argument("--pyscf", action="store_true", help="run the exact PySCF SCF instead of a model")
    parser.add_argument("--method", default="pbe", help="PySCF method with --pyscf (xc name or 'hf')")
    parser.add_argument("--basis", default="def2-svp", help="PySCF basis with --pyscf")
    parser.add_argument("--ensemble", choices=["nve", "langevin"], default="nve",
                        help="nve: velocity Verlet, total-energy drift reported; langevin: thermostat at "
                             "--temperature (friction --friction), centre of mass fixed, no drift reported")
    parser.add_argument("--temperature", type=float, default=300.0,
                        help="K. nve: the starting temperature, exactly, over the 3N - 6 degrees of freedom "
                             "left without net momentum and rotation (3N - 5 linear; Maxwell-Boltzmann "
                             "velocities scaled to it). From a minimum (a molecule name, an optimized "
                             "structure) the run then settles near half of it, the kinetic energy sharing with "
                             "the potential energy: to sample near T, start at 2T or use langevin. langevin: "
                             "the bath temperature, also the start (over 3N - 3 degrees of freedom). Reported "
                             "temperatures count the same degrees of freedom")
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
