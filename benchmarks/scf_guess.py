"""SCF cycles from the model's predicted density against PySCF's own initial guesses (issue #13).

On held-out test frames of a shipped model, one run each of PySCF's SCF at the model's level of theory
(PySCF's default convergence threshold, conv_tol 1e-9; the card's grid) started from: the model's density
(the aufbau density of the predicted F, what ``WaveCalculator(model=..., refine="scf")`` does) and PySCF's
guesses minao (the default), atom, huckel, vsap and 1e. Per guess: mean SCF cycles, their ratio to minao's,
mean wall time (the model's forward pass included in its own), the energy error of the first cycle
(|E[P0] - E_converged|, E[P0] the energy functional at the initial density), and the median energy error after
each cycle for the model's density and minao (what sets the count: PySCF stops when two successive energies
agree to conv_tol). Prints the tables, writes JSON.

``--error-scale A [A ...]`` adds what accuracy of F a cycle target needs: on the same frames, SCFs started from
the aufbau density of F_A = F* + A (F_model - F*), F* the converged Fock matrix, i.e. the model's own error
scaled by A (A = 1 is the model; the MAE of F_A is A times the model's). Only the occupied-virtual part of the
error moves the density, so scaling the whole error is scaling the part that counts.

    python benchmarks/scf_guess.py --molecule water --frames 20 --error-scale 0.5 0.25 0.125 0.0625
    python benchmarks/scf_guess.py --molecule ethanol --frames 10 --error-scale 0.5 0.25 0.125 0.0625
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_info, table, write_result  # noqa: E402

GUESSES = ("model", "minao", "atom", "huckel", "vsap", "1e")
HARTREE_MEV = 27211.386245988


def _scf(mol, level, guess, dm0=None):
    from pyscf import dft

    mf = dft.RKS(mol)
    mf.xc = level["xc"]
    mf.grids.level = int(level.get("grid_level", 3))
    mf.verbose = 0
    if dm0 is None:
        mf.init_guess = guess
        dm0 = mf.get_init_guess(mol, guess)
    e_first = float(mf.energy_tot(dm=dm0))
    energies = []
    mf.callback = lambda env: energies.append(float(env["e_tot"]))
    mf.kernel(dm0=dm0)
    mf.cycle_errors = [abs(e - float(mf.e_tot)) for e in energies]   # Hartree, after each cycle
    return mf, e_first


def _error_scan(mol, level, mf_conv, model_fock, scales) -> dict:
    """Cycles from the density of F* + A (F_model - F*) for each A; F* the Fock matrix of the converged SCF."""
    import torch

    from ase_wavecalc.electronic import closed_shell_density

    f_conv = mf_conv.get_fock(dm=mf_conv.make_rdm1())    # no DIIS: the Fock matrix of the converged density
    overlap = torch.from_numpy(mf_conv.get_ovlp())
    out = {}
    for a in scales:
        fock = f_conv + a * (model_fock - f_conv)
        dm0 = closed_shell_density(torch.from_numpy(fock), overlap, mol.nelectron // 2).numpy()
        mf, e_first = _scf(mol, level, "scaled", dm0)
        out[a] = {"cycles": int(mf.cycles), "converged": bool(mf.converged),
                  "fock_mae_uha": float(np.mean(np.abs(fock - f_conv))) * 1e6,
                  "first_error_mev": abs(e_first - float(mf_conv.e_tot)) * HARTREE_MEV}
    return out


def run(molecule: str, n_frames: int, log=print, scales=()) -> dict:
    from ase_wavecalc.dataset import read_dataset
    from ase_wavecalc.integrals import make_mol
    from ase_wavecalc.providers import ModelProvider

    name = f"{molecule}-pbe-def2svp"
    card = json.loads((ROOT / "models" / name / "model.json").read_text())
    level = card["level_of_theory"]
    test = card["split"]["datasets"][0]["test_frames"][:n_frames]
    data = read_dataset(ROOT / "data" / f"{molecule}_pbe_def2svp.db", keys=())
    where = {int(f): i for i, f in enumerate(data["frame"])}
    model = ModelProvider(str(ROOT / "models" / name))
    per = {g: {"cycles": [], "seconds": [], "first_error_mev": [], "converged": [], "cycle_errors_ha": []}
           for g in GUESSES}
    scan = {float(a): {"cycles": [], "converged": [], "fock_mae_uha": [], "first_error_mev": []} for a in scales}
    for f in test:
        pos = data["positions_bohr"][where[int(f)]]
        mol = make_mol(data["numbers"], pos, level["basis"])
        model_fock, minao_scf = None, None
        for g in GUESSES:
            t0 = time.perf_counter()
            dm0 = None
            if g == "model":
                predicted = model.compute(data["numbers"], pos)
                dm0, model_fock = predicted.dm, np.asarray(predicted.fock)
            mf, e_first = _scf(mol, level, g, dm0)
            per[g]["seconds"].append(time.perf_counter() - t0)
            minao_scf = mf if g == "minao" else minao_scf
            per[g]["cycles"].append(int(mf.cycles))
            per[g]["converged"].append(bool(mf.converged))
            per[g]["first_error_mev"].append(abs(e_first - float(mf.e_tot)) * HARTREE_MEV)
            per[g]["cycle_errors_ha"].append(mf.cycle_errors)
        if scales:
            for a, r in _error_scan(mol, level, minao_scf, model_fock, scales).items():
                for k, v in r.items():
                    scan[float(a)][k].append(v)
        log(f"frame {f}: " + ", ".join(f"{g} {per[g]['cycles'][-1]}" for g in GUESSES))
    minao = np.mean(per["minao"]["cycles"])
    summary = {g: {"mean_cycles": float(np.mean(v["cycles"])), "ratio_to_minao": float(np.mean(v["cycles"]) / minao),
                   "mean_seconds": float(np.mean(v["seconds"])),
                   "median_first_cycle_error_mev": float(np.median(v["first_error_mev"])),
                   "all_converged": all(v["converged"]),
                   "median_error_by_cycle_ha": _median_by_cycle(v["cycle_errors_ha"]), **v} for g, v in per.items()}
    scaled = {a: {**v, "mean_cycles": float(np.mean(v["cycles"])), "ratio_to_minao": float(np.mean(v["cycles"]) / minao),
                  "fock_mae_uha": float(np.mean(v["fock_mae_uha"])), "fock_mae_uha_by_frame": v["fock_mae_uha"],
                  "median_first_cycle_error_mev": float(np.median(v["first_error_mev"])),
                  "all_converged": all(v["converged"])} for a, v in scan.items()}
    return {"model": name, "level_of_theory": level, "conv_tol": 1e-9, "test_frames": test, "guesses": summary,
            "error_scale": scaled}


def _median_by_cycle(traces: list[list[float]]) -> list[float]:
    """Median over frames of |E_k - E_converged| after cycle k (a run that stopped earlier counts as 0)."""
    n = max(len(t) for t in traces)
    return [float(np.median([t[k] if k < len(t) else 0.0 for t in traces])) for k in range(n)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecule", choices=("water", "ethanol"), required=True)
    p.add_argument("--frames", type=int, default=10, help="held-out test frames (default 10)")
    p.add_argument("--error-scale", type=float, nargs="*", default=[], metavar="A",
                   help="also start from F* + A (F_model - F*) for each A (module docstring)")
    p.add_argument("--json", default=None, help="JSON path (default: benchmarks/results/)")
    args = p.parse_args(argv)
    if any(a < 0 for a in args.error_scale):
        p.error("--error-scale values must be >= 0")
    res = run(args.molecule, args.frames, scales=args.error_scale)
    rows = [[g, f"{s['mean_cycles']:.1f}", f"{s['ratio_to_minao']:.2f}", f"{s['mean_seconds']:.2f}",
             f"{s['median_first_cycle_error_mev']:.3g}", "yes" if s["all_converged"] else "NO"]
            for g, s in res["guesses"].items()]
    print(f"\n{res['model']}: SCF from each initial guess on {len(res['test_frames'])} held-out frames")
    print(table(["guess", "cycles", "/ minao", "seconds", "first-cycle |dE| (meV)", "converged"], rows))
    # why a guess needs the cycles it does: PySCF stops when two successive energies agree to conv_tol and the
    # orbital gradient is below sqrt(conv_tol), so the energy error after each cycle sets the count
    n = max(len(res["guesses"][g]["median_error_by_cycle_ha"]) for g in ("model", "minao"))
    print("\nmedian |E - E_converged| (Hartree) after each cycle (conv_tol 1e-9 on successive energies):")
    print(table(["guess"] + [str(k + 1) for k in range(n)],
                [[g] + [f"{e:.1e}" for e in res["guesses"][g]["median_error_by_cycle_ha"]]
                 + [""] * (n - len(res["guesses"][g]["median_error_by_cycle_ha"])) for g in ("model", "minao")]))
    if res["error_scale"]:
        print("\nthe model's F error scaled by A (F* + A (F_model - F*)): the accuracy of F a cycle count needs")
        print(table(["A", "F MAE (uHa)", "cycles", "/ minao", "first-cycle |dE| (meV)", "converged"],
                    [[f"{a:g}", f"{s['fock_mae_uha']:.1f}", f"{s['mean_cycles']:.1f}", f"{s['ratio_to_minao']:.2f}",
                      f"{s['median_first_cycle_error_mev']:.3g}", "yes" if s["all_converged"] else "NO"]
                     for a, s in sorted(res["error_scale"].items(), reverse=True)]))
    path = write_result(f"scf_guess_{args.molecule}", {"machine": machine_info(), **res}, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
