"""How good is a model's density in energy terms: the reference functional evaluated at the predicted density.

For held-out test frames (the model card's split, datasets from ``data/``), the predicted density matrix
P (from the network's F and the exact S) is put into the reference method's own energy functional
(``ase_wavecalc.reference.functional_energy``: PBE/def2-SVP on the same grid, no SCF). That energy is
variational (never below the SCF energy, error second order in the density error), and its forces are its
exact gradient: fixed-density derivative from PySCF plus Tr[F_KS dP/dR] by autograd through the network
and S. Side by side on the same frames: the calculator's own fast energy (electronic energy of the
predicted Hamiltonian + learned correction) and the cost of both against a PySCF SCF + gradient.

The point is a diagnosis: if the functional at the predicted density is much closer to the reference
than the model's own energy, the density is good and the error sits in the energy expression (first
order in F errors), not in the wavefunction.

    python benchmarks/density_energy.py --max-frames 20

Writes benchmarks/results/density_energy_<molecule>.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import (DEFAULT_MODELS, ROOT, finish_machine_info, machine_info, machine_line, resolve_model, table,
                     write_result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecule", choices=sorted(DEFAULT_MODELS), default="ethanol")
    parser.add_argument("--model", default=None, help="model name or directory (default: the shipped one)")
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--max-frames", type=int, default=20, help="first N test frames of the first dataset")
    parser.add_argument("--pyscf-frames", type=int, default=2, help="frames also timed with a full PySCF SCF")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch
    from ase import Atoms
    from ase.calculators.calculator import all_changes

    from ase_wavecalc import WaveCalculator, electronic, integrals
    from ase_wavecalc.dataset import read_dataset
    from ase_wavecalc.energy import n_occupied, one_electron_matrices
    from ase_wavecalc.providers import reference_provider_for
    from ase_wavecalc.model.io import load_model
    from ase_wavecalc.reference import functional_energy, run_reference
    from ase_wavecalc.units import BOHR, HARTREE

    spec = resolve_model(args.model or DEFAULT_MODELS[args.molecule])
    model, card = load_model(spec, dtype=torch.float64)
    model.eval()
    reference = reference_provider_for(card)          # the card's level of theory
    method, basis, grid_level = reference.method, reference.basis, reference.grid_level
    entry = card["split"]["datasets"][0]
    frames = list(entry["test_frames"])[: args.max_frames]
    data = read_dataset(Path(args.data_dir) / Path(entry["name"]).name, keys=("e_tot", "gradient"))
    index = {int(f): i for i, f in enumerate(data["frame"])}
    rows = [index[f] for f in frames]
    numbers = data["numbers"]
    info = machine_info()
    print(machine_line(info))
    print(f"{spec}: {len(rows)} test frames of {entry['name']}; functional {method}/{basis}, grid level {grid_level}")

    calc = WaveCalculator(model=spec)
    fast_e, fast_f, func_e, func_f, t_fast, t_func = [], [], [], [], [], []
    for r in rows:
        pos = data["positions_bohr"][r]
        atoms = Atoms(numbers=numbers, positions=pos * BOHR)
        t0 = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"], all_changes)
        t_fast.append(time.perf_counter() - t0)
        fast_e.append(calc.results["energy"] / HARTREE)
        fast_f.append(-calc.results["forces"] * BOHR / HARTREE)        # gradient, Hartree/Bohr

        t0 = time.perf_counter()
        p = torch.tensor(pos, requires_grad=True)
        fock = model(torch.as_tensor(numbers), p, None)["fock"][0]
        mol = integrals.make_mol(numbers, pos, basis)
        overlap, _ = one_electron_matrices(numbers, p, basis, mol=mol)
        dm = electronic.closed_shell_density(fock, overlap, n_occupied(numbers, mol=mol))
        out = functional_energy(mol, dm.detach().numpy(), method, grid_level, gradient=True)
        (response,) = torch.autograd.grad((dm * torch.as_tensor(out["fock"])).sum(), p)
        t_func.append(time.perf_counter() - t0)
        func_e.append(out["e_tot"])
        func_f.append(out["gradient_fixed_density"] + response.numpy())
        print(f"  frame {frames[len(func_e) - 1]}: E error model {1e3 * HARTREE * (fast_e[-1] - data['e_tot'][r]):+8.2f}"
              f" meV, functional {1e3 * HARTREE * (func_e[-1] - data['e_tot'][r]):+8.2f} meV", flush=True)

    t_pyscf = []
    for r in rows[: args.pyscf_frames]:
        t0 = time.perf_counter()
        run_reference(numbers, data["positions_bohr"][r] * BOHR, method=method, basis=basis, conv_tol=1e-10,
                      grid_level=grid_level, gradient=True)
        t_pyscf.append(time.perf_counter() - t0)

    e_ref, g_ref = data["e_tot"][rows], data["gradient"][rows]

    def errors(e, g):
        de = (np.array(e) - e_ref) * HARTREE * 1e3
        df = np.abs(np.array(g) - g_ref) * HARTREE / BOHR * 1e3
        return {"energy_mae_meV": float(np.abs(de).mean()), "energy_mean_error_meV": float(de.mean()),
                "energy_min_error_meV": float(de.min()), "energy_mae_offset_removed_meV": float(np.abs(de - de.mean()).mean()),
                "force_mae_meV_A": float(df.mean()), "force_max_abs_meV_A": float(df.max())}

    res = {"model_energy": errors(fast_e, fast_f), "functional_at_model_density": errors(func_e, func_f)}
    timing = {"model_s": float(np.median(t_fast[1:] or t_fast)), "functional_s": float(np.median(t_func)),
              "pyscf_scf_gradient_s": float(np.median(t_pyscf)) if t_pyscf else None}
    rows_out = []
    for key, label in (("model_energy", "model energy (calculator)"),
                       ("functional_at_model_density", f"{method} functional at model density")):
        m = res[key]
        rows_out.append([label, f"{m['energy_mae_meV']:.2f}", f"{m['energy_mean_error_meV']:+.2f}",
                         f"{m['energy_min_error_meV']:+.2f}", f"{m['energy_mae_offset_removed_meV']:.2f}",
                         f"{m['force_mae_meV_A']:.1f}"])
    print(table(["energy", "E MAE (meV)", "mean error", "min error", "E MAE, offset removed", "force MAE (meV/A)"],
                rows_out))
    ratio = (f"; PySCF SCF+gradient {timing['pyscf_scf_gradient_s']:.2f} s" if timing["pyscf_scf_gradient_s"] else "")
    print(f"seconds per energy+forces: model {timing['model_s']:.3f}, functional at model density "
          f"{timing['functional_s']:.2f}{ratio}")
    finish_machine_info(info)
    path = write_result(f"density_energy_{args.molecule}", {
        "benchmark": "density_energy", "machine": info, "model": spec, "dataset": entry["name"], "frames": frames,
        "method": method, "basis": basis, "grid_level": grid_level, "errors": res, "timing": timing}, args.json)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
