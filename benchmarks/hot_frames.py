"""Models on the same frames, their errors by how far above the minimum each frame lies.

A model's test error averages over frames that are mostly near the minimum; MD at 500 K also visits frames
0.8-1.1 eV above it, where errors grow (the shipped ethanol model: about 10 meV/A near the minimum, 50-80 at
+0.8-0.9 eV). Every ``LABEL=MODEL`` (a shipped name or a model directory) is run through ``WaveCalculator`` on
every frame of ``--frames`` (npz parts in the format of ``data/`` and the shared sets, or a folder of them);
reported per model: energy MAE (meV per molecule; and with its mean offset removed), force MAE (meV/A per
component), and the force MAE in bins of the reference energy above the lowest frame of the set
(``--bins``, eV). Frames a model refuses (outside its training domain) are counted, not scored. The MACE
baseline of ``../shared/notes/mlip-baseline.md`` (16.8 meV/A on ``data/ethanol_pbe_def2svp_500K_s11``) runs
in another environment; ``benchmarks/baselines/ethanol-mlip`` (this project's network trained on energies and
forces only) is an MLIP measured in the same run.

    python benchmarks/hot_frames.py --frames data/ethanol_pbe_def2svp_500K_s11 \
        --model shipped=ethanol-pbe-def2svp mlip=benchmarks/baselines/ethanol-mlip

Writes benchmarks/results/hot_frames_<frames folder>.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from _common import finish_machine_info, machine_info, machine_line, resolve_model, table, write_result


def read_frames(folder: Path) -> dict:
    """numbers (n,), positions (F, n, 3) Angstrom, e_tot (F,) Hartree, gradient (F, n, 3) Hartree/Bohr."""
    parts = sorted(folder.glob("part-*.npz")) if folder.is_dir() else [folder]
    if not parts:
        raise SystemExit(f"no npz parts (part-*.npz) in {folder}")
    data = [np.load(p) for p in parts]
    numbers = data[0]["numbers"]
    if any(not np.array_equal(d["numbers"], numbers) for d in data):
        raise SystemExit(f"the parts in {folder} hold different molecules")
    return {"numbers": numbers, **{k: np.concatenate([d[k] for d in data]) for k in ("positions", "e_tot", "gradient")}}


def score(model: str, frames: dict, bins: list[float]) -> dict:
    from ase import Atoms
    from ase.calculators.calculator import InputError
    from ase.units import Bohr, Hartree

    from ase_wavecalc import WaveCalculator

    calc = WaveCalculator(model=model)
    above = (frames["e_tot"] - frames["e_tot"].min()) * Hartree
    e_err, f_err, kept, refused = [], [], [], 0
    for k in range(len(frames["e_tot"])):
        atoms = Atoms(numbers=frames["numbers"], positions=frames["positions"][k])
        atoms.calc = calc
        try:
            e = atoms.get_potential_energy()
            f = atoms.get_forces()
        except InputError:
            refused += 1
            continue
        e_err.append(e - frames["e_tot"][k] * Hartree)
        f_err.append(np.abs(f + frames["gradient"][k] * Hartree / Bohr).mean())
        kept.append(k)
    e_err, f_err = 1e3 * np.array(e_err), 1e3 * np.array(f_err)
    edges = list(bins) + [np.inf]
    by_bin = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (above[kept] >= lo) & (above[kept] < hi)
        by_bin.append({"from_eV": lo, "to_eV": None if hi == np.inf else hi, "frames": int(sel.sum()),
                       "force_mae_meV_A": float(f_err[sel].mean()) if sel.any() else None})
    return {"frames": len(kept), "refused": refused, "energy_mae_meV": float(np.abs(e_err).mean()),
            "energy_mae_offset_removed_meV": float(np.abs(e_err - e_err.mean()).mean()),
            "force_mae_meV_A": float(f_err.mean()), "by_energy_above_lowest": by_bin}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", required=True, help="a folder of npz parts (or one npz file)")
    parser.add_argument("--model", nargs="+", required=True, metavar="LABEL=MODEL")
    parser.add_argument("--bins", type=float, nargs="+", default=[0.0, 0.3, 0.6, 0.9],
                        help="lower edges (eV above the set's lowest frame) of the force-error bins")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*semi-quantitative.*", category=UserWarning)
    folder = Path(args.frames)
    frames = read_frames(folder)
    info = machine_info()
    print(machine_line(info))
    print(f"{len(frames['e_tot'])} frames of {folder}; span "
          f"{(frames['e_tot'].max() - frames['e_tot'].min()) * 27211.386:.0f} meV")
    result = {"benchmark": "hot_frames", "machine": info, "frames": str(folder), "bins_eV": args.bins,
              "models": {}}
    rows = []
    for spec in args.model:
        label, _, model = spec.partition("=")
        if not model:
            raise SystemExit(f"--model {spec!r}: expected LABEL=MODEL")
        r = score(resolve_model(model), frames, args.bins)
        result["models"][label] = {"model": model, **r}
        rows.append([label, r["frames"], r["refused"], f"{r['energy_mae_meV']:.2f}",
                     f"{r['energy_mae_offset_removed_meV']:.2f}", f"{r['force_mae_meV_A']:.1f}"]
                    + ["-" if b["force_mae_meV_A"] is None else f"{b['force_mae_meV_A']:.1f} ({b['frames']})"
                       for b in r["by_energy_above_lowest"]])
    bins = args.bins + [None]
    heads = [f"F {lo:g}-{hi:g} eV" if hi is not None else f"F >{lo:g} eV" for lo, hi in zip(bins[:-1], bins[1:])]
    print(table(["model", "frames", "refused", "E MAE (meV)", "E MAE, offset removed", "F MAE (meV/A)"] + heads,
                rows))
    finish_machine_info(info)
    path = write_result(f"hot_frames_{folder.name}", result, args.json)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
