"""What a fit's label costs, and what looser settings would save and move: SCF convergence and density fitting.

One PBE/def2-SVP label (SCF from a nearby geometry's density, as a fit's labels start from the Fock network's
density; energy, F, orbital energies, gradient) of a molecule displaced by 0.03 A per coordinate, with
``conv_tol`` 1e-10, 1e-9, 1e-8 (``conv_tol_grad`` = sqrt(conv_tol)/10, as ``reference.run_reference`` sets it)
and with density fitting (RI-J, def2-universal-jfit) at 1e-8. Reported: SCF cycles and seconds, gradient
seconds, and how far each label is from the 1e-10 one (F, occupied orbital energies, forces, energy). One
thread. Prints a table, writes JSON.

    python benchmarks/label_settings.py --molecule 'O=C1C=CNC(=O)N1'
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from _common import finish_machine_info, machine_info, machine_line, table, write_result

from ase_wavecalc.units import HARTREE_PER_BOHR


def label(mol, guess, conv_tol: float, density_fit: bool) -> dict:
    from pyscf import dft

    mf = dft.RKS(mol)
    mf.xc, mf.grids.level = "pbe", 3
    mf.conv_tol, mf.conv_tol_grad = conv_tol, np.sqrt(conv_tol) / 10
    if density_fit:
        mf = mf.density_fit()
    cycles = [0]
    mf.callback = lambda env: cycles.__setitem__(0, cycles[0] + 1)
    t0 = time.perf_counter()
    e = mf.kernel(dm0=guess)
    t1 = time.perf_counter()
    fock = mf.get_fock(dm=mf.make_rdm1())
    grad = mf.nuc_grad_method().kernel()
    t2 = time.perf_counter()
    return {"e": float(e), "fock": fock, "mo_energy": mf.mo_energy, "grad": np.asarray(grad), "cycles": cycles[0],
            "scf_s": t1 - t0, "gradient_s": t2 - t1, "nocc": int(mol.nelectron // 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecule", default="O=C1C=CNC(=O)N1", help="what `wavecalc fit` reads (SMILES, name, "
                                                                      "file)")
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from pyscf import dft, gto, lib

    lib.num_threads(1)

    from ase_wavecalc.fit.candidates import relax
    from ase_wavecalc.fit.molecule import resolve_molecule

    info = machine_info()
    print(machine_line(info))
    atoms = relax(resolve_molecule(args.molecule))
    atoms = atoms[0] if isinstance(atoms, tuple) else atoms

    def make(positions):
        return gto.M(atom=list(zip(atoms.get_chemical_symbols(), positions)), basis=args.basis, verbose=0)

    near = dft.RKS(make(atoms.positions))
    near.xc, near.conv_tol = "pbe", 1e-8
    near.kernel()
    guess = near.make_rdm1()                    # the density of a nearby geometry: a model's guess stands in
    displaced = atoms.positions + np.random.default_rng(0).normal(0.0, 0.03, atoms.positions.shape)
    mol = make(displaced)
    arms = [("conv_tol 1e-10", 1e-10, False), ("conv_tol 1e-9", 1e-9, False), ("conv_tol 1e-8", 1e-8, False),
            ("RI-J, conv_tol 1e-8", 1e-8, True)]
    labels = {name: label(mol, guess, tol, df) for name, tol, df in arms}
    ref = labels["conv_tol 1e-10"]
    rows, result = [], {"molecule": args.molecule, "basis": args.basis, "nao": int(mol.nao), "arms": {}}
    for name, lab in labels.items():
        n = lab["nocc"]
        entry = {"cycles": lab["cycles"], "scf_s": round(lab["scf_s"], 2), "gradient_s": round(lab["gradient_s"], 2),
                 "fock_max_uHa": float(np.abs(lab["fock"] - ref["fock"]).max() * 1e6),
                 "fock_mean_uHa": float(np.abs(lab["fock"] - ref["fock"]).mean() * 1e6),
                 "occ_eps_max_uHa": float(np.abs(lab["mo_energy"][:n] - ref["mo_energy"][:n]).max() * 1e6),
                 "force_max_meV_A": float(np.abs(lab["grad"] - ref["grad"]).max() * 1e3 * HARTREE_PER_BOHR),
                 "energy_uHa": float((lab["e"] - ref["e"]) * 1e6)}
        result["arms"][name] = entry
        rows.append([name, entry["cycles"], f"{entry['scf_s']:.1f}", f"{entry['gradient_s']:.1f}",
                     f"{entry['fock_max_uHa']:.2f} / {entry['fock_mean_uHa']:.3f}", f"{entry['occ_eps_max_uHa']:.2f}",
                     f"{entry['force_max_meV_A']:.2f}", f"{entry['energy_uHa']:.2f}"])
    print(f"{args.molecule}: PBE/{args.basis}, {mol.nao} AOs, SCF from a nearby geometry's density, one thread")
    print(table(["label", "SCF cycles", "SCF s", "gradient s", "F max / mean (uHa)", "occ. eps max (uHa)",
                 "forces max (meV/A)", "energy (uHa)"], rows))
    result["machine"] = finish_machine_info(info)
    print(f"wrote {write_result('label_settings', result, args.json)}")


if __name__ == "__main__":
    main()
