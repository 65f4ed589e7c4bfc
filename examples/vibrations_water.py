"""Vibrational frequencies of water: the trained model (finite differences) vs PySCF's analytic Hessian.

1. Optimize water with PySCF PBE/def2-SVP (``WaveCalculator(method="pbe")`` + BFGS, tight ``--ref-fmax``).
2. At that geometry: PySCF's analytic RKS Hessian (``pyscf.hessian.rks``) and
   ``pyscf.hessian.thermo.harmonic_analysis`` (translations and rotations projected out).
3. At the same geometry: ``ase.vibrations.Vibrations`` with the model (central differences of the model's
   forces). Its Hessian goes through the same ``harmonic_analysis`` (same masses, same projection), and
   ASE's own unprojected frequencies are printed too. Optionally (``--pyscf-fd``) the same finite
   differences with PySCF forces, which separates finite-difference error from model error.

The model is evaluated at the reference minimum, where its own forces are not exactly zero; the residual
model force there is printed.

    python examples/vibrations_water.py --out vib
    python examples/vibrations_water.py --model DIR --delta 0.005 --pyscf-fd

Outputs in ``--out``: ``vib_water_model/`` (Vibrations cache), ``vib_water_pyscf_opt.traj``,
``vibrations_water.json``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

import numpy as np
from _common import DEFAULT_MODELS, model_calculator, out_dir, pyscf_calculator, resolve_model, threads_note


def pyscf_hessian(atoms, method="pbe", basis="def2-svp", grid_level=3, conv_tol=1e-11):
    """Analytic Hessian (n, n, 3, 3) in Hartree/Bohr^2 and the pyscf Mole, at ``atoms``' positions."""
    from pyscf import dft

    from ase_wavecalc.integrals import make_mol
    from ase_wavecalc.units import BOHR

    mol = make_mol(atoms.numbers, atoms.positions / BOHR, basis)
    mf = dft.RKS(mol)
    mf.xc = method
    mf.grids.level = grid_level
    mf.conv_tol = conv_tol
    mf.verbose = 0
    mf.kernel()
    if not mf.converged:
        raise RuntimeError("PySCF SCF did not converge")
    return mf.Hessian().kernel(), mol


def ase_hessian_to_au(h2d, n):
    """(3n, 3n) eV/Angstrom^2 -> (n, n, 3, 3) Hartree/Bohr^2 (the layout of PySCF's Hessian)."""
    from ase_wavecalc.units import BOHR, HARTREE

    return (np.asarray(h2d) * BOHR**2 / HARTREE).reshape(n, 3, n, 3).transpose(0, 2, 1, 3)


def finite_difference_hessian(atoms, calc, name, delta, nfree):
    """ASE Vibrations with ``calc``: (Hessian (3n, 3n) eV/A^2, ASE frequencies cm^-1 (3n,), seconds)."""
    from ase.vibrations import Vibrations

    atoms = atoms.copy()
    atoms.calc = calc
    if name.exists():
        shutil.rmtree(name)  # stale displacements from another model would be reused silently
    vib = Vibrations(atoms, name=str(name), delta=delta, nfree=nfree)
    t0 = time.perf_counter()
    vib.run()
    seconds = time.perf_counter() - t0
    data = vib.get_vibrations()
    return data.get_hessian_2d(), data.get_frequencies(), seconds


def fmt_freq(f) -> str:
    f = complex(f)
    return f"{f.imag:.1f}i" if abs(f.imag) > abs(f.real) else f"{f.real:.1f}"


def real_or_negative(f) -> float:
    f = complex(f)
    return -abs(f.imag) if abs(f.imag) > abs(f.real) else f.real


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODELS["water"], help="model name or directory")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--delta", type=float, default=0.01, help="finite-difference displacement, Angstrom")
    parser.add_argument("--nfree", type=int, choices=[2, 4], default=2, help="displacements per coordinate")
    parser.add_argument("--ref-fmax", type=float, default=1e-3, help="PySCF optimization threshold, eV/A")
    parser.add_argument("--ref-steps", type=int, default=100, help="max BFGS steps of the PySCF optimization")
    parser.add_argument("--pyscf-fd", action="store_true", help="also finite differences of PySCF forces")
    parser.add_argument("--out", default=".", help="output directory")
    args = parser.parse_args(argv)

    from ase.build import molecule
    from ase.optimize import BFGS
    from pyscf.hessian import thermo

    out = out_dir(args.out)
    print(f"water, PBE/def2-SVP reference vs model {resolve_model(args.model)}; {threads_note()}")

    # 1. reference minimum
    atoms = molecule("H2O")
    atoms.calc = pyscf_calculator()
    t0 = time.perf_counter()
    opt = BFGS(atoms, trajectory=str(out / "vib_water_pyscf_opt.traj"), logfile=None)
    converged = opt.run(fmax=args.ref_fmax, steps=args.ref_steps)
    fmax_ref = float(np.linalg.norm(atoms.get_forces(), axis=1).max())
    print(f"PySCF optimization: {opt.nsteps} BFGS steps, converged {bool(converged)}, max force "
          f"{fmax_ref:.2e} eV/A, {time.perf_counter() - t0:.1f} s; O-H {atoms.get_distance(0, 1):.4f} A, "
          f"H-O-H {atoms.get_angle(1, 0, 2):.2f} deg")
    geometry = atoms.copy()
    geometry.calc = None

    # 2. analytic PySCF Hessian
    t0 = time.perf_counter()
    hess_ref, mol = pyscf_hessian(geometry)
    t_ref = time.perf_counter() - t0
    mass = mol.atom_mass_list(isotope_avg=True)
    freq_ref = thermo.harmonic_analysis(mol, hess_ref, mass=mass)["freq_wavenumber"]
    print(f"PySCF analytic Hessian: {t_ref:.1f} s")

    # 3. model by finite differences, at the same geometry
    n = len(geometry)
    model_calc = model_calculator(args.model, args.dtype)
    probe = geometry.copy()
    probe.calc = model_calc
    f_model = float(np.linalg.norm(probe.get_forces(), axis=1).max())
    h_model, ase_freq_model, t_model = finite_difference_hessian(geometry, model_calculator(args.model, args.dtype),
                                                                 out / "vib_water_model", args.delta, args.nfree)
    freq_model = thermo.harmonic_analysis(mol, ase_hessian_to_au(h_model, n), mass=mass)["freq_wavenumber"]
    print(f"model finite differences ({6 * n if args.nfree == 2 else 12 * n} displacements, delta {args.delta} A): "
          f"{t_model:.1f} s; model max |force| at the PySCF minimum {f_model:.4f} eV/A")

    columns = {"PySCF analytic": freq_ref, "model FD": freq_model}
    if args.pyscf_fd:
        h_fd, _, t_fd = finite_difference_hessian(geometry, pyscf_calculator(), out / "vib_water_pyscf_fd",
                                                  args.delta, args.nfree)
        columns["PySCF FD"] = thermo.harmonic_analysis(mol, ase_hessian_to_au(h_fd, n), mass=mass)["freq_wavenumber"]
        print(f"PySCF finite differences: {t_fd:.1f} s")

    labels = ["bend", "sym. stretch", "asym. stretch"] if len(freq_ref) == 3 else [""] * len(freq_ref)
    print(f"\nharmonic frequencies (cm^-1; translations/rotations projected out, same masses):")
    print(f"{'mode':<15}" + "".join(f"{c:>16}" for c in columns) + f"{'model - ref':>14}")
    for k, label in enumerate(labels):
        cells = "".join(f"{fmt_freq(col[k]):>16}" for col in columns.values())
        diff = real_or_negative(freq_model[k]) - real_or_negative(freq_ref[k])
        print(f"{label:<15}{cells}{diff:>+14.1f}")
    mae = float(np.mean([abs(real_or_negative(a) - real_or_negative(b)) for a, b in zip(freq_model, freq_ref)]))
    print(f"frequency MAE model vs PySCF analytic: {mae:.1f} cm^-1")
    low = sorted(ase_freq_model, key=lambda f: abs(complex(f)))
    print("model, ASE Vibrations (unprojected, all 3N): " + ", ".join(fmt_freq(f) for f in low))

    result = {"model": args.model, "dtype": args.dtype, "delta_A": args.delta, "nfree": args.nfree,
              "geometry_A": geometry.positions.tolist(), "pyscf_opt_fmax_eV_per_A": fmax_ref,
              "model_fmax_at_ref_min_eV_per_A": f_model, "modes": labels,
              "frequencies_cm1": {k: [real_or_negative(f) for f in v] for k, v in columns.items()},
              "ase_frequencies_model_cm1": [real_or_negative(f) for f in ase_freq_model],
              "mae_cm1": mae, "seconds": {"pyscf_hessian": t_ref, "model_fd": t_model}}
    path = out / "vibrations_water.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"summary written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
