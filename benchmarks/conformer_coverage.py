"""Does a model know every low conformer of its molecule? Its errors at each minimum against PySCF.

From the geometry a model's sampling started at (a `wavecalc fit` card's ``fit.start``, else ``--structure``),
``ase_wavecalc.fit.conformers.low_conformers`` finds the molecule's minima up to ``--window`` eV above the
lowest (RDKit embeddings relaxed with GFN2-xTB, same bonds and stereochemistry). At each, the model's energy
and forces go against PySCF at the model's level of theory (computed here), with the committee's energy
spread and whether it warned. A conformer the training data never reached shows as errors far above the
model's test errors; the covalent-bond check of the training domain cannot see it (the bonds are the same).
Prints a table, writes JSON.

    python benchmarks/conformer_coverage.py --model malondialdehyde-pbe-def2svp
    python benchmarks/conformer_coverage.py --model models/mine --structure start.xyz
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
from _common import resolve_model, table, write_result


def main() -> None:
    from ase import Atoms
    from ase.io import read

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.fit.card import fit_start
    from ase_wavecalc.fit.conformers import low_conformers
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="shipped model name or model directory")
    parser.add_argument("--structure", default=None, help="start geometry (default: the card's fit.start)")
    parser.add_argument("--window", type=float, default=0.6, help="eV above the lowest minimum")
    parser.add_argument("--embeddings", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = resolve_model(args.model)
    card = json.loads((Path(model) / "model.json").read_text())
    start = read(args.structure) if args.structure else fit_start(card)
    if start is None:
        raise SystemExit(f"{args.model}: the card records no fit.start; pass --structure")
    minima = low_conformers(start, n_embed=args.embeddings, window_eV=args.window, max_keep=8)
    lot = card["level_of_theory"]
    reference = WaveCalculator(method=lot["xc"] if lot["method"] == "rks" else "hf", basis=lot["basis"])
    rows, out = [], []
    for m in minima:
        atoms = Atoms(numbers=m.numbers, positions=m.positions)
        atoms.calc = WaveCalculator(model=str(model))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                e, f = atoms.get_potential_energy(), atoms.get_forces()
                refused = None
            except Exception as exc:  # noqa: BLE001  (an out-of-domain refusal is a result here)
                e = f = None
                refused = str(exc).split(";")[0]
        std = atoms.calc.uncertainty.get("energy_std") if refused is None else None
        ref = Atoms(numbers=m.numbers, positions=m.positions)
        ref.calc = reference
        er, fr = ref.get_potential_energy(), ref.get_forces()
        entry = {"energy_above_lowest_eV": m.info["energy_eV"], "is_start": bool(m.info["is_start"]),
                 "refused": refused, "warned": any("committee" in str(w.message) for w in caught),
                 "energy_error_meV": None if e is None else 1e3 * (e - er),
                 "force_mae_meV_A": None if f is None else 1e3 * float(np.abs(f - fr).mean()),
                 "force_max_meV_A": None if f is None else 1e3 * float(np.abs(f - fr).max()),
                 "energy_std_meV": None if std is None else 1e3 * float(std),
                 "positions_angstrom": np.round(m.positions, 6).tolist()}
        out.append(entry)
        fmt = (lambda v, spec: "-" if v is None else format(v, spec))
        rows.append([f"{m.info['energy_eV']:.3f}" + (" (start)" if m.info["is_start"] else ""),
                     fmt(entry["energy_error_meV"], ".1f"), fmt(entry["force_mae_meV_A"], ".1f"),
                     fmt(entry["force_max_meV_A"], ".0f"), fmt(entry["energy_std_meV"], ".1f"),
                     "refused" if refused else ("warned" if entry["warned"] else "-")])
    print(table(["minimum (eV above lowest)", "E error (meV)", "force MAE (meV/A)", "force max", "committee std (meV)",
                 "calculator"], rows))
    print(f"wrote {write_result('conformer_coverage_' + card.get('name', 'model'), {'model': str(model), 'minima': out}, args.json)}")


if __name__ == "__main__":
    main()
