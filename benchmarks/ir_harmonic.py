"""Harmonic IR spectra of a shipped model against PySCF at the model's level, same procedure (issue #13).

Each method is optimized with its own forces (BFGS, fmax 1e-3 eV/A) from ``ase.build.molecule``, then
``ase.vibrations.Infrared`` (central differences of forces and dipole, 0.01 A) gives frequencies and
intensities (``ase_wavecalc.ir.harmonic_ir``). Prints the bands side by side (water: all three; ethanol: the
ten strongest of PySCF's, matched to the model's by frequency order) and writes JSON.

    python benchmarks/ir_harmonic.py --molecule water       # ~1 min
    python benchmarks/ir_harmonic.py --molecule ethanol     # ~15 min, most of it PySCF
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, table, write_result  # noqa: E402

MOLECULES = {"water": ("H2O", "water-pbe-def2svp", 3), "ethanol": ("CH3CH2OH", "ethanol-pbe-def2svp", 10)}


def spectrum(atoms, calc) -> dict:
    from ase.optimize import BFGS

    from ase_wavecalc.ir import harmonic_ir

    t0 = time.perf_counter()
    atoms = atoms.copy()
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    opt.run(fmax=1e-3, steps=300)
    out = harmonic_ir(atoms, calc)
    out["seconds"] = time.perf_counter() - t0
    out["bfgs_steps"] = int(opt.nsteps)
    return out


def main(argv=None) -> int:
    from ase.build import molecule

    from ase_wavecalc import WaveCalculator

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecule", choices=tuple(MOLECULES), required=True)
    p.add_argument("--json", default=None, help="JSON path (default: benchmarks/results/)")
    args = p.parse_args(argv)
    name, model, n_bands = MOLECULES[args.molecule]
    atoms = molecule(name)
    res = {"model": spectrum(atoms, WaveCalculator(model=model)),
           "pyscf": spectrum(atoms, WaveCalculator(method="pbe", basis="def2-svp", conv_tol=1e-11))}
    ref, mod = res["pyscf"], res["model"]
    # bands in frequency order are the same modes for these rigid molecules; the strongest n of PySCF's
    strongest = np.sort(np.argsort(ref["intensities_km_mol"])[::-1][:n_bands])
    rows, pairs = [], []
    for i in strongest:
        fr, fm = ref["frequencies_cm"][i], mod["frequencies_cm"][i]
        ir_, im = ref["intensities_km_mol"][i], mod["intensities_km_mol"][i]
        pairs.append({"pyscf_cm": fr, "model_cm": fm, "pyscf_km_mol": ir_, "model_km_mol": im})
        rows.append([f"{fr:.1f}", f"{fm:.1f}", f"{fm - fr:+.1f}", f"{ir_:.1f}", f"{im:.1f}",
                     f"{100 * (im - ir_) / max(ir_, 1e-9):+.0f}%"])
    print(f"\n{args.molecule}: harmonic IR at each method's own minimum, PBE/def2-SVP "
          f"(model {mod['seconds']:.0f} s, PySCF {ref['seconds']:.0f} s)")
    print(table(["PySCF cm-1", "model cm-1", "diff", "PySCF km/mol", "model km/mol", "rel."], rows))
    df = np.array([q["model_cm"] - q["pyscf_cm"] for q in pairs])
    summary = {"bands": pairs, "max_abs_frequency_error_cm": float(np.abs(df).max()),
               "mean_abs_frequency_error_cm": float(np.abs(df).mean()),
               "mean_abs_relative_intensity_error": float(np.mean([abs(q["model_km_mol"] - q["pyscf_km_mol"])
                                                                   / max(q["pyscf_km_mol"], 1e-9) for q in pairs]))}
    print(f"max |frequency error| {summary['max_abs_frequency_error_cm']:.1f} cm-1, mean relative intensity "
          f"error {100 * summary['mean_abs_relative_intensity_error']:.1f}%")
    path = write_result(f"ir_harmonic_{args.molecule}", {"machine": machine_info(), "summary": summary, **res}, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
