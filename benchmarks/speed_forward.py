"""Time of one network forward pass (float64 and float32) next to one PySCF PBE/def2-SVP SCF.

For each molecule (``ase.build.molecule`` geometry, def2-SVP):

* network forward: ``model(numbers, positions_bohr)`` under ``torch.inference_mode()``: F (and the energy
  head's outputs), nothing else (no integrals, no eigenproblem, no gradient);
* PySCF: a fresh ``pyscf.dft.RKS`` (PBE, grid level 3, conv_tol 1e-10 as in ``WaveCalculator``'s
  defaults, default minao guess) energy only, for the same geometry;
* ratio = PySCF median / forward median.

Then the forward of each molecule is profiled (float64): time per network stage (forward hooks on the
model's sub-modules: edge rotations, radial basis, interaction blocks, pair features, readouts; the rest
is indexing and matrix assembly) and the top operators of ``torch.profiler`` by self CPU time.

    python benchmarks/speed_forward.py                              # shipped models
    python benchmarks/speed_forward.py --model /tmp/standin-model --repeats 5 --pyscf-repeats 1

Writes benchmarks/results/speed_forward.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np
from _common import (DEFAULT_MODELS, MOLECULES, finish_machine_info, machine_info, machine_line, ms,
                     resolve_model, table, time_call, write_result)

STAGES = {"wigner": "edge rotations (Wigner D)", "rbf": "radial basis", "envelope": "radial basis",
          "interactions": "interaction blocks", "pair": "pair features", "atom_readout": "on-site readout",
          "pair_readout": "pair readout"}


def pyscf_scf(numbers, positions_bohr, basis="def2-svp", xc="pbe", grid_level=3, conv_tol=1e-10):
    from pyscf import dft

    from ase_wavecalc.integrals import make_mol

    mol = make_mol(numbers, positions_bohr, basis)
    mf = dft.RKS(mol)
    mf.xc, mf.grids.level, mf.conv_tol, mf.verbose = xc, grid_level, conv_tol, 0
    e = mf.kernel()
    if not mf.converged:
        raise RuntimeError("PySCF SCF did not converge")
    return e, mf.cycles


def stage_times(model, z, pos, repeats):
    """Median seconds per stage of the forward (forward hooks on the top-level sub-modules)."""
    import torch

    acc = defaultdict(float)
    starts = {}
    handles = []

    def pre(name):
        def hook(_module, _inputs):
            starts[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(_module, _inputs, _output):
            acc[name] += time.perf_counter() - starts.pop(name)
        return hook

    for name, child in model.named_children():
        label = STAGES.get(name, name)
        targets = list(child.children()) if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)) else [child]
        for sub in targets:
            handles.append(sub.register_forward_pre_hook(pre(label)))
            handles.append(sub.register_forward_hook(post(label)))
    per_run, totals = [], []
    try:
        with torch.inference_mode():
            model(z, pos, None)
            for _ in range(repeats):
                acc.clear()
                t0 = time.perf_counter()
                model(z, pos, None)
                totals.append(time.perf_counter() - t0)
                per_run.append(dict(acc))
    finally:
        for h in handles:
            h.remove()
    names = sorted({k for r in per_run for k in r})
    med = {k: float(np.median([r.get(k, 0.0) for r in per_run])) for k in names}
    total = float(np.median(totals))
    med["other (indexing, matrix assembly, symmetrization)"] = max(total - sum(med.values()), 0.0)
    return total, med


def profile_ops(model, z, pos, top):
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(z, pos, None)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(z, pos, None)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "calls_per_forward": e.count / 3, "self_ms_per_forward": e.self_cpu_time_total / 3e3,
             "self_percent": 100.0 * e.self_cpu_time_total / total} for e in rows]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecules", nargs="+", choices=sorted(MOLECULES), default=["water", "ethanol"])
    parser.add_argument("--model", default=None, help="one model (name or directory) for every molecule; "
                                                      "default: each molecule's shipped model")
    parser.add_argument("--repeats", type=int, default=30, help="timed forward passes per case")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pyscf-repeats", type=int, default=3, help="timed SCF runs per molecule")
    parser.add_argument("--pyscf-warmup", type=int, default=1)
    parser.add_argument("--top", type=int, default=12, help="profiler operators listed")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/speed_forward.json)")
    args = parser.parse_args(argv)

    import torch
    from ase.build import molecule

    from ase_wavecalc.model.io import load_model
    from ase_wavecalc.units import BOHR

    info = machine_info()
    print(machine_line(info))
    results = {"benchmark": "speed_forward", "machine": info, "cases": [], "profile": {}}
    rows = []
    for mol_name in args.molecules:
        spec = resolve_model(args.model or DEFAULT_MODELS[mol_name])
        atoms = molecule(MOLECULES[mol_name])
        z = torch.as_tensor(atoms.numbers, dtype=torch.long)
        pos_bohr = atoms.positions / BOHR
        t_scf = time_call(lambda: pyscf_scf(atoms.numbers, pos_bohr), args.pyscf_repeats, args.pyscf_warmup)
        case = {"molecule": mol_name, "formula": atoms.get_chemical_formula(), "model": spec,
                "pyscf_scf": t_scf, "forward": {}}
        for dtype_name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            model, card = load_model(spec, dtype=dtype)
            pos = torch.as_tensor(pos_bohr, dtype=dtype)
            with torch.inference_mode():
                out = model(z, pos, None)
                t = time_call(lambda: model(z, pos, None), args.repeats, args.warmup)
            case["nao"] = int(out["fock"].shape[-1])
            case["forward"][dtype_name] = {**t, "speedup_vs_pyscf": t_scf["median_s"] / t["median_s"]}
            rows.append([f"{mol_name} ({case['nao']} AO)", dtype_name, ms(t["median_s"]),
                         f"{ms(t['min_s'])}-{ms(t['max_s'])}", ms(t_scf["median_s"]),
                         f"{t_scf['median_s'] / t['median_s']:.0f}x"])
            if dtype_name == "float64" and not args.no_profile:
                total, stages = stage_times(model, z, pos, max(5, args.repeats // 3))
                ops = profile_ops(model, z, pos, args.top)
                results["profile"][mol_name] = {"dtype": "float64", "forward_median_s": total,
                                                "stages_s": stages, "top_ops": ops}
        case["n_params"] = int(sum(p.numel() for p in model.parameters()))
        results["cases"].append(case)

    print()
    print(table(["molecule", "dtype", "forward ms", "min-max ms", "PySCF SCF ms", "PySCF/forward"], rows))
    print("(forward = network only; PySCF = RKS PBE/def2-SVP energy from the minao guess; medians)")
    for mol_name, prof in results["profile"].items():
        total = prof["forward_median_s"]
        print(f"\nwhere the {mol_name} forward (float64, {ms(total)} ms) goes:")
        srt = sorted(prof["stages_s"].items(), key=lambda kv: -kv[1])
        print(table(["stage", "ms", "%"], [[k, ms(v), f"{100 * v / total:.0f}"] for k, v in srt]))
        print(f"top operators (torch.profiler, self CPU time):")
        print(table(["op", "calls", "ms", "%"],
                    [[o["op"], f"{o['calls_per_forward']:.0f}", f"{o['self_ms_per_forward']:.3f}",
                      f"{o['self_percent']:.1f}"] for o in prof["top_ops"]]))
        prof["dominant_stage"] = srt[0][0]
        prof["dominant_op"] = prof["top_ops"][0]["op"] if prof["top_ops"] else None
    finish_machine_info(info)
    path = write_result("speed_forward", results, args.json)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
