"""The fast energy+forces path of readout models (issue #22): time and accuracy against the eager network.

Per molecule (the shipped model, ``ase.build`` geometry moved by 0.01 A noise before every call), each
timed call is ``calc.calculate(atoms, ["energy", "forces"], all_changes)`` through ``WaveCalculator``:

* eager f64: ``fast=None``, the network as before (``model(..., energy_only=True)`` + autograd);
* fast f64 / fast f32: ``model/fast.py`` (per-molecule constants folded, radial MLPs batched, committee
  without autograd) in float64 / float32 (the sum of element offsets always float64);
* fast f32 compiled (``--compile``): the same under ``torch.compile`` (inductor), compiled at the first call;
  its compile seconds are reported (cold or warm depending on inductor's on-disk cache, which is reported);
* GFN2-xTB: a fresh ``tblite.ase.TBLite`` per call, as benchmarks/speed_calculator.py.

The variants are called in turn, one call each per round, so that the load of a shared machine slows them
alike; medians over the rounds, ratios to xTB from the same rounds.

Accuracy: on the model card's test frames (``data/<dataset>/part-*.npz``, frame id = position in the parts),
energy and force MAE against the PySCF reference for every variant, and the largest difference to the
eager float64 network.

    python benchmarks/speed_fast.py                          # water and ethanol, ~5 min
    python benchmarks/speed_fast.py --compile --molecules ethanol
    python benchmarks/speed_fast.py --model DIR --structure uracil.xyz --compile   # any model and geometry

With ``--structure``, the molecule is that file's geometry and ``--model`` the model (a model whose card has
no committed test frames is timed only).

Writes benchmarks/results/speed_fast.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _common import (DEFAULT_MODELS, MOLECULES, ROOT, finish_machine_info, machine_info, machine_line, resolve_model,
                     table, write_result)

from ase_wavecalc.fit.card import dataset_folder  # noqa: E402
from ase_wavecalc.units import BOHR as BOHR_A, HARTREE  # noqa: E402

HARTREE_MEV = 1e3 * HARTREE


def test_frames(spec: str, max_frames: int | None):
    """(numbers, positions Angstrom (M, n, 3), e_tot Ha (M,), gradient Ha/Bohr (M, n, 3)) of the card's test split."""
    card = json.loads((Path(spec) / "model.json").read_text())
    entry = card["split"]["datasets"][0]
    parts = [np.load(p) for p in sorted(dataset_folder(card, entry["name"], ROOT).glob("part-*.npz"))]
    if not parts or not entry.get("test_frames"):
        return None
    pos = np.concatenate([p["positions"] for p in parts])
    e = np.concatenate([p["e_tot"] for p in parts])
    g = np.concatenate([p["gradient"] for p in parts])
    frames = np.asarray(entry["test_frames"][:max_frames], dtype=int)
    return parts[0]["numbers"], pos[frames], e[frames], g[frames]


def accuracy(providers: dict, spec: str, max_frames) -> dict:
    """Per variant: errors on the card's test frames; {} when the card has none committed."""
    frames = test_frames(spec, max_frames)
    if frames is None:
        return {}
    numbers, pos, e_ref, g_ref = frames
    out, values = {}, {}
    for label, prov in providers.items():
        es, gs = [], []
        for x in pos:
            prov._cache = None
            r = prov.compute(numbers, x / BOHR_A, want_gradient=True)
            es.append(r.energy)
            gs.append(np.asarray(r.gradient))
        values[label] = (np.array(es), np.array(gs))
    e0, g0 = values["eager f64"]
    for label, (es, gs) in values.items():
        out[label] = {"energy_mae_meV": float(np.mean(np.abs(es - e_ref)) * HARTREE_MEV),
                      "force_mae_meV_A": float(np.mean(np.abs(gs - g_ref)) * HARTREE_MEV / BOHR_A),
                      "max_abs_energy_vs_eager_meV": float(np.max(np.abs(es - e0)) * HARTREE_MEV),
                      "max_abs_force_vs_eager_meV_A": float(np.max(np.abs(gs - g0)) * HARTREE_MEV / BOHR_A),
                      "n_frames": int(len(es))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--molecules", nargs="+", choices=sorted(MOLECULES), default=["water", "ethanol"])
    p.add_argument("--rounds", type=int, default=60, help="timed calls per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--model", default=None, help="with --structure: the model (name or directory)")
    p.add_argument("--structure", default=None, help="a structure file ASE reads: time this geometry instead")
    p.add_argument("--compile", action="store_true", help="also the torch.compile'd fast path (minutes per molecule)")
    p.add_argument("--max-frames", type=int, default=None, help="test frames per model for the accuracy")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch
    from ase.build import molecule
    from ase.calculators.calculator import all_changes
    from tblite.ase import TBLite

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.providers import ModelProvider

    torch.set_num_threads(1)
    info = machine_info()
    print(machine_line(info))
    cache_dir = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or f"/tmp/torchinductor_{os.environ.get('USER', 'root')}"
    result = {"benchmark": "speed_fast", "machine": info, "inductor_cache_dir": cache_dir,
              "inductor_cache_existed": Path(cache_dir).is_dir(), "cases": []}
    rows = []
    if (args.structure is None) != (args.model is None):
        p.error("--structure and --model go together")
    cases = [(name, resolve_model(DEFAULT_MODELS[name]), molecule(MOLECULES[name])) for name in args.molecules]
    if args.structure is not None:
        from ase.io import read

        custom = read(args.structure)
        cases = [(custom.get_chemical_formula(), resolve_model(args.model), custom)]
    for mol_name, spec, atoms0 in cases:
        variants = {"eager f64": {"fast": None}, "fast f64": {"fast": "float64"}, "fast f32": {"fast": "float32"}}
        if args.compile:
            variants["fast f32 compiled"] = {"fast": "float32", "compile": True}
        providers = {k: ModelProvider(spec, **kw) for k, kw in variants.items()}
        case = {"molecule": mol_name, "model": spec, "n_atoms": len(atoms0)}
        if args.compile:
            t0 = time.perf_counter()
            providers["fast f32 compiled"].compute(atoms0.numbers, atoms0.positions / BOHR_A, True)
            case["compile_seconds"] = time.perf_counter() - t0
            compiled = providers["fast f32 compiled"].fast.compiled(atoms0.numbers)
            case["compile_check"] = None if compiled is None else compiled.check
            print(f"{mol_name}: compiled in {case['compile_seconds']:.0f} s "
                  f"({'in use' if compiled is not None else 'FAILED, uncompiled path in use'})", flush=True)
        calcs = {k: WaveCalculator(provider=prov) for k, prov in providers.items()}
        rng = np.random.default_rng(0)
        last = list(calcs)[-1]
        network_only = f"{last}, network only"     # FastPath.compute: no calculator, provider or domain checks
        samples = {k: [] for k in list(calcs) + [network_only, "GFN2-xTB"]}
        for i in range(args.warmup + args.rounds):
            for label in samples:
                atoms = atoms0.copy()
                atoms.positions += rng.normal(scale=0.01, size=atoms.positions.shape)
                t0 = time.perf_counter()
                if label == network_only:
                    providers[last].fast.compute(atoms.numbers, atoms.positions / BOHR_A, True)
                else:
                    calc = TBLite(method="GFN2-xTB", verbosity=0) if label == "GFN2-xTB" else calcs[label]
                    calc.calculate(atoms, ["energy", "forces"], all_changes)
                if i >= args.warmup:
                    samples[label].append(time.perf_counter() - t0)
        xtb = statistics.median(samples["GFN2-xTB"])
        base = statistics.median(samples["eager f64"])
        case["timings"] = {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
                           for k, v in samples.items()}
        print(f"{mol_name}: accuracy on test frames ...", flush=True)
        case["accuracy"] = accuracy({k: v for k, v in providers.items()}, spec, args.max_frames)
        if not case["accuracy"]:
            print(f"{mol_name}: timed only (no committed test frames)")
        for k, t in case["timings"].items():
            acc = case["accuracy"].get(k, {})
            rows.append([mol_name, k, f"{1e3 * t['median_s']:.2f}", f"{base / t['median_s']:.2f}",
                         f"{t['median_s'] / xtb:.1f}",
                         f"{acc['energy_mae_meV']:.3f}" if acc else "-", f"{acc['force_mae_meV_A']:.2f}" if acc else "-",
                         f"{acc['max_abs_energy_vs_eager_meV']:.1e}" if acc else "-",
                         f"{acc['max_abs_force_vs_eager_meV_A']:.1e}" if acc else "-"])
        result["cases"].append(case)
    print()
    print(table(["molecule", "energy+forces", "median ms", "speed-up", "x xTB", "E MAE meV", "F MAE meV/A",
                 "max|dE| vs eager meV", "max|dF| vs eager meV/A"], rows))
    finish_machine_info(info)
    path = write_result("speed_fast", result, args.json)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
