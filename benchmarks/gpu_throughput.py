"""Energy+forces calls per second of the shipped ethanol model on one device (issue #22, "Devices").

Each timed call is ``calc.calculate(atoms, ["energy", "forces"], all_changes)`` through ``WaveCalculator(model=...,
device=DEVICE)`` at a geometry moved by 0.01 A noise (so nothing is served from the cache), for every ``fast`` mode
asked for (default: float32, the calculator's default, float64 and the eager network). The results come back as
CPU float64 numpy, so each call includes the device synchronization. Batched replicas: the fast path
(``model/fast.py``) is built for one molecule and takes one geometry per call, so there is no batched variant;
only single calls are measured (``"batched": null`` in the JSON says so).

Also the largest difference to the CPU's energy and forces at the first geometry (float64 network), so a run on
a GPU checks the device path as it measures it.

    python benchmarks/gpu_throughput.py                          # cuda (refused in one line without a GPU)
    python benchmarks/gpu_throughput.py --device cpu --calls 50  # the same on the CPU

Writes benchmarks/results/gpu_throughput_<device>.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import finish_machine_info, machine_info, machine_line, write_result  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    ap.add_argument("--model", default="ethanol-pbe-def2svp", help="model name or directory")
    ap.add_argument("--calls", type=int, default=200, help="timed calls per mode")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls per mode first")
    ap.add_argument("--fast", nargs="+", default=["float32", "float64", "none"],
                    help="fast modes to time (none: the eager network)")
    ap.add_argument("--json", default=None, help="output path (default benchmarks/results/gpu_throughput_DEVICE.json)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from ase_wavecalc.devices import DeviceError, resolve_device

    try:
        device = resolve_device(args.device)
    except DeviceError as exc:
        print(f"gpu_throughput: error: {exc}", file=sys.stderr)
        return 2
    from ase.build import molecule
    from ase.calculators.calculator import all_changes

    from ase_wavecalc import WaveCalculator

    info = machine_info()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    base = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    geometries = [base.positions + rng.normal(0.0, 0.01, base.positions.shape)
                  for _ in range(args.warmup + args.calls)]

    # the device path against the CPU at the first geometry (float64 network)
    check = {}
    for dev in ("cpu", str(device)):
        atoms = base.copy()
        atoms.positions = geometries[0]
        atoms.calc = WaveCalculator(model=args.model, device=dev, fast="float64")
        check[dev] = (atoms.get_potential_energy(), atoms.get_forces())
    diff = {"energy_ev": abs(check[str(device)][0] - check["cpu"][0]),
            "forces_ev_a": float(np.abs(check[str(device)][1] - check["cpu"][1]).max())}

    modes = {}
    for mode in args.fast:
        fast = None if mode.lower() in ("none", "off", "eager") else mode
        atoms = base.copy()
        calc = WaveCalculator(model=args.model, device=str(device), fast=fast)
        samples = []
        for i, pos in enumerate(geometries):
            atoms.positions = pos
            t0 = time.perf_counter()
            calc.calculate(atoms, ["energy", "forces"], all_changes)
            if i >= args.warmup:
                samples.append(time.perf_counter() - t0)
        samples.sort()
        median = samples[len(samples) // 2]
        modes[mode] = {"calls": len(samples), "median_ms": 1e3 * median, "min_ms": 1e3 * samples[0],
                       "max_ms": 1e3 * samples[-1], "calls_per_s": 1.0 / median,
                       "calls_per_s_mean": len(samples) / sum(samples)}
        print(f"{mode:>8}: {modes[mode]['calls_per_s']:8.1f} calls/s (median {modes[mode]['median_ms']:.2f} ms)")
    payload = {"device": str(device), "gpu": gpu, "model": args.model, "molecule": "CH3CH2OH",
               "single_calls": modes, "batched": None,
               "batched_note": "the fast path takes one geometry per call (model/fast.py): no batched replicas",
               "difference_to_cpu": diff, "machine": finish_machine_info(info)}
    print(machine_line(payload["machine"]) + (f"; GPU {gpu}" if gpu else ""))
    print(f"difference to the CPU: energy {diff['energy_ev']:.2e} eV, forces {diff['forces_ev_a']:.2e} eV/A")
    path = write_result(f"gpu_throughput_{str(device).replace(':', '')}", payload, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
