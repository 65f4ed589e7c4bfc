"""An intramolecular proton transfer at GFN2-xTB, at the reference level, and (with ``--model``) on a model.

A fit samples with GFN2-xTB and labels with PBE; where the two disagree about a barrier, the fit's MD visits
what the model's own MD will not, and the other way round. For a molecule with an intramolecular hydrogen bond
(malondialdehyde's O-H...O): the lowest conformer (``fit.conformers``), the proton moved to the acceptor and
relaxed, a climbing-image NEB between the two at GFN2-xTB, then PySCF (PBE/def2-SVP by default) on every image,
and the model on every image if given (its energy against the reference's at the same image; where the model
refuses a geometry, PySCF computes it and the row says so). Prints the energy profile along the path (eV above
the reference's first image) and the donor-H and acceptor-H distances, writes JSON.

    python benchmarks/proton_transfer.py --molecule 'O/C=C\\C=O' --model malondialdehyde-pbe-def2svp
"""
from __future__ import annotations

import argparse

import numpy as np
from _common import finish_machine_info, machine_info, machine_line, table, write_result

from ase_wavecalc.units import HARTREE


def hydrogen_bond(atoms) -> tuple[int, int, int]:
    """(donor, hydrogen, acceptor): the N/O-bonded hydrogen with the closest other N/O."""
    z = atoms.numbers
    polar = [i for i in range(len(z)) if z[i] in (7, 8)]
    best = None
    for h in np.flatnonzero(z == 1):
        donor = min(polar, key=lambda i: atoms.get_distance(h, i), default=None)
        if donor is None or atoms.get_distance(h, donor) > 1.2:
            continue
        for acc in polar:
            if acc != donor and (best is None or atoms.get_distance(h, acc) < atoms.get_distance(best[1], best[2])):
                best = (donor, int(h), acc)
    if best is None:
        raise SystemExit("no N-H or O-H hydrogen with another N or O to go to")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--molecule", default="O/C=C\\C=O")
    parser.add_argument("--method", default="pbe")
    parser.add_argument("--basis", default="def2-svp")
    parser.add_argument("--images", type=int, default=7, help="NEB images between the two ends")
    parser.add_argument("--model", default=None, help="a model to put along the path too")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from ase.mep import NEB
    from ase.optimize import BFGS, FIRE
    from tblite.ase import TBLite

    from ase_wavecalc.fit.candidates import relax
    from ase_wavecalc.fit.conformers import low_conformers
    from ase_wavecalc.fit.molecule import resolve_molecule
    from ase_wavecalc.reference import run_reference

    info = machine_info()
    print(machine_line(info))
    start = relax(resolve_molecule(args.molecule))
    start = start[0] if isinstance(start, tuple) else start
    first = low_conformers(start)[0]
    first.calc = None
    donor, h, acc = hydrogen_bond(first)
    last = first.copy()
    way = last.positions[h] - last.positions[acc]
    last.positions[h] = last.positions[acc] + 1.0 * way / np.linalg.norm(way)
    last.calc = TBLite(method="GFN2-xTB", verbosity=0)
    BFGS(last, logfile=None).run(fmax=0.01, steps=500)
    if last.get_distance(h, acc) > last.get_distance(h, donor):
        raise SystemExit("the proton went back to its donor at GFN2-xTB: no second minimum to go to")
    images = [first] + [first.copy() for _ in range(args.images)] + [last]
    for im in images[:-1]:
        im.calc = TBLite(method="GFN2-xTB", verbosity=0)
    neb = NEB(images, climb=True, method="improvedtangent")
    neb.interpolate()
    FIRE(neb, logfile=None).run(fmax=0.03, steps=1000)
    xtb = np.array([im.get_potential_energy() for im in images])
    ref = np.array([float(run_reference(im.numbers, im.positions, method=args.method, basis=args.basis,
                                        conv_tol=1e-9, gradient=False)["e_tot"]) * HARTREE for im in images])
    model = None
    if args.model:
        from ase_wavecalc import WaveCalculator

        calc = WaveCalculator(model=args.model, out_of_domain="reference")
        model, by = [], []
        for im in images:
            a = im.copy()
            a.calc = calc
            before = int(getattr(calc.provider, "n_reference", 0) or 0)
            model.append(a.get_potential_energy())
            by.append("PySCF" if int(getattr(calc.provider, "n_reference", 0) or 0) > before else "model")
        model = np.array(model)
    rows, path = [], []
    for k, im in enumerate(images):
        entry = {"image": k, "d_donor_H_A": round(im.get_distance(donor, h), 3),
                 "d_acceptor_H_A": round(im.get_distance(acc, h), 3),
                 "d_donor_acceptor_A": round(im.get_distance(donor, acc), 3),
                 "xtb_eV": round(float(xtb[k] - xtb[0]), 4), "reference_eV": round(float(ref[k] - ref[0]), 4)}
        row = [k, entry["d_donor_H_A"], entry["d_acceptor_H_A"], entry["d_donor_acceptor_A"],
               f"{entry['xtb_eV']:.3f}", f"{entry['reference_eV']:.3f}"]
        if model is not None:      # the model's energy is the reference's total energy: compared as it is
            entry["model_eV"] = round(float(model[k] - ref[0]), 4)
            entry["model_minus_reference_meV"] = round(1e3 * float(model[k] - ref[k]), 1)
            entry["computed_by"] = by[k]
            row += [f"{entry['model_eV']:.3f}", f"{entry['model_minus_reference_meV']:+.1f}", by[k]]
        path.append(entry)
        rows.append(row)
    header = ["image", "donor-H (A)", "acceptor-H (A)", "donor...acceptor (A)", "GFN2-xTB (eV)",
              f"{args.method.upper()}/{args.basis} (eV)"] + (["model (eV)", "model - ref (meV)", "by (out of domain: "
                                                                "PySCF)"] if model is not None else [])
    print(f"{args.molecule}: proton transfer along the GFN2-xTB climbing-image NEB, energies above image 0")
    print(table(header, rows))
    top = int(np.argmax(xtb))
    print(f"barrier along the path: GFN2-xTB {xtb[top] - xtb[0]:.3f} eV; {args.method.upper()} at that image "
          f"{ref[top] - ref[0]:.3f} eV, highest on the path {ref.max() - ref[0]:.3f} eV")
    result = {"molecule": args.molecule, "method": args.method, "basis": args.basis, "model": args.model,
              "path": path, "machine": finish_machine_info(info)}
    print(f"wrote {write_result('proton_transfer', result, args.json)}")


if __name__ == "__main__":
    main()
