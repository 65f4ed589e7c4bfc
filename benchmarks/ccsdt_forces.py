"""CCSD(T) analytic forces on a few held-out frames of a dataset, written as a label part (shared/data format).

The ethanol CCSD(T)/cc-pVDZ labels carry energies only (a gradient costs ~20x the energy); the forces of a
transfer-learned model are checked against these few frames instead. Frames are the model's test frames
(none was trained on), first N in the card's order; a re-run continues an existing output file.

    python benchmarks/ccsdt_forces.py --model models/ethanol-pbe-def2svp --dataset data/ethanol_pbe_def2svp.db \
        --basis cc-pvdz --frames 12 --out data/ethanol_ccsdt_cc-pvdz_forces/part-000.npz
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model directory whose test frames are used")
    p.add_argument("--dataset", required=True)
    p.add_argument("--basis", default="cc-pvdz")
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)

    from ase_wavecalc.correlated import correlated_settings, run_correlated
    from ase_wavecalc.dataset import BOHR, connect

    card = json.loads((Path(args.model) / "model.json").read_text())
    test = card["split"]["datasets"][0]["test_frames"][: args.frames]
    db = connect(args.dataset)
    rows = {int(r.frame): r for r in db.select(include_data=False) if "frame" in r}
    out = Path(args.out)
    done = {}
    if out.is_file():
        with np.load(out, allow_pickle=False) as d:
            done = {int(f): (e, g) for f, e, g in zip(d["frame"], d["e_tot"], d["gradient"])}
    level = correlated_settings("ccsd(t)", args.basis, gradient=True)
    for f in test:
        if f in done:
            continue
        r = rows[f]
        t0 = time.perf_counter()
        res = run_correlated(r.numbers, np.array(r.positions) / BOHR, "ccsd(t)", args.basis)
        done[f] = (float(res["e_tot"]), res["gradient"])
        print(f"frame {f}: {time.perf_counter() - t0:.0f} s", flush=True)
        frames = sorted(done)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp.npz")
        np.savez_compressed(
            tmp, frame=np.array(frames), numbers=np.array(r.numbers),
            positions=np.stack([np.array(rows[k].positions) for k in frames]),
            e_tot=np.array([done[k][0] for k in frames]), gradient=np.stack([done[k][1] for k in frames]),
            source_part=np.array([str(rows[k].get("source", "")).split("/")[-1] for k in frames]),
            source_frame=np.array([int(rows[k].get("source_index", -1)) for k in frames]),
            source_set=str(rows[frames[0]].get("source", "/")).split("/")[0],
            **{k: str(v) for k, v in level.items()})
        tmp.replace(out)   # atomic: an interrupted run never leaves a half-written file
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
