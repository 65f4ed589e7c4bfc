"""Orbital energies and electron density from the model's Hamiltonian vs PySCF PBE/def2-SVP.

At one geometry (``ase.build.molecule``, or a structure file with ``--structure``) both calculators give
HOMO, LUMO and gap (``calc.get_homo_lumo()``), the occupied orbital energies, the dipole, and the electron
density, which is written as Gaussian cube files (``calc.write_cube``; open them in VMD, Avogadro, ASE's
GUI, ...). The two densities are compared on the same grid: integrated electrons and the integrated
absolute difference (in electrons).

    python examples/orbitals_cube.py --molecule ethanol --out cubes
    python examples/orbitals_cube.py --molecule water --model DIR --size 40

Outputs in ``--out``: ``density_<molecule>_model.cube``, ``density_<molecule>_pyscf.cube``,
``orbitals_<molecule>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from _common import (DEFAULT_MODELS, MOLECULES, model_calculator, out_dir, pyscf_calculator, resolve_model,
                     threads_note)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecule", choices=sorted(MOLECULES), default="ethanol")
    parser.add_argument("--structure", default=None, help="structure file instead of ase.build.molecule")
    parser.add_argument("--model", default=None, help="model name or directory (default: the molecule's "
                                                      "shipped model)")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--size", type=int, default=60, help="cube grid points per axis")
    parser.add_argument("--margin", type=float, default=2.5, help="box margin around the atoms, Angstrom")
    parser.add_argument("--out", default=".", help="output directory")
    args = parser.parse_args(argv)

    from ase.build import molecule
    from ase.calculators.calculator import PropertyNotImplementedError
    from ase.io import read

    out = out_dir(args.out)
    model = args.model or DEFAULT_MODELS[args.molecule]
    atoms = read(args.structure) if args.structure else molecule(MOLECULES[args.molecule])
    tag = args.molecule if not args.structure else atoms.get_chemical_formula()
    print(f"{atoms.get_chemical_formula()}: model {resolve_model(model)} vs PySCF PBE/def2-SVP; {threads_note()}")

    rows = {}
    grids = {}
    for label, calc in (("model", model_calculator(model, args.dtype)), ("pyscf", pyscf_calculator())):
        a = atoms.copy()
        a.calc = calc
        t0 = time.perf_counter()
        dipole = a.get_dipole_moment()        # one calculation: orbitals, density, dipole (and energy)
        seconds = time.perf_counter() - t0
        try:
            energy = a.get_potential_energy()
        except PropertyNotImplementedError:  # a Hamiltonian-only model: no energy, the rest is there
            energy = None
        homo, lumo = calc.get_homo_lumo()
        eps = calc.get_eigenvalues()
        n_occ = int(round(calc.get_number_of_electrons() / 2))
        cube = out / f"density_{tag}_{label}.cube"
        calc.write_cube(str(cube), nx=args.size, ny=args.size, nz=args.size, margin=args.margin)
        rho, origin, axes = calc.get_density_on_grid(args.size, args.size, args.size, margin=args.margin)
        grids[label] = (rho, abs(np.linalg.det(axes)))
        rows[label] = {"homo_eV": homo, "lumo_eV": lumo, "gap_eV": lumo - homo, "occupied_eV": eps[:n_occ].tolist(),
                       "dipole_eA": dipole.tolist(), "energy_eV": energy,
                       "seconds": seconds, "cube": str(cube), "electrons_on_grid": float(rho.sum() * grids[label][1])}

    m, r = rows["model"], rows["pyscf"]
    print(f"\n{'':<26}{'model':>14}{'PySCF':>14}{'model - PySCF':>16}")
    for key, name, scale, unit in (("homo_eV", "HOMO", 1, "eV"), ("lumo_eV", "LUMO", 1, "eV"),
                                   ("gap_eV", "HOMO-LUMO gap", 1, "eV"), ("energy_eV", "total energy", 1, "eV")):
        if m[key] is None:
            print(f"{name + ' (' + unit + ')':<26}{'n/a':>14}{r[key] * scale:>14.4f}{'':>16}")
            continue
        print(f"{name + ' (' + unit + ')':<26}{m[key] * scale:>14.4f}{r[key] * scale:>14.4f}"
              f"{(m[key] - r[key]) * scale:>+16.4f}")
    dip_m, dip_r = np.linalg.norm(m["dipole_eA"]), np.linalg.norm(r["dipole_eA"])
    print(f"{'|dipole| (e*A)':<26}{dip_m:>14.4f}{dip_r:>14.4f}{dip_m - dip_r:>+16.4f}")
    print(f"{'first call s (incl. setup)':<26}{m['seconds']:>14.3f}{r['seconds']:>14.3f}")
    occ_m, occ_r = np.array(m["occupied_eV"]), np.array(r["occupied_eV"])
    eps_mae = float(np.mean(np.abs(occ_m - occ_r)))
    print(f"occupied orbital energies (eV), MAE {1e3 * eps_mae:.1f} meV:")
    print("  model: " + " ".join(f"{e:8.3f}" for e in occ_m))
    print("  PySCF: " + " ".join(f"{e:8.3f}" for e in occ_r))
    rho_m, dv = grids["model"]
    rho_r, _ = grids["pyscf"]
    diff = float(np.abs(rho_m - rho_r).sum() * dv)
    print(f"density on a {args.size}^3 grid: electrons model {m['electrons_on_grid']:.3f}, PySCF "
          f"{r['electrons_on_grid']:.3f}; integrated |rho_model - rho_PySCF| = {diff:.4f} e")
    print(f"cube files: {m['cube']}, {r['cube']}")

    result = {"model": model, "dtype": args.dtype, "formula": atoms.get_chemical_formula(), "grid": args.size,
              "model_result": m, "pyscf_result": r, "occupied_eps_mae_meV": 1e3 * eps_mae,
              "density_abs_diff_e": diff}
    path = out / f"orbitals_{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"summary written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
