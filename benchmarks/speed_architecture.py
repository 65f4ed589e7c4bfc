"""What an energy+forces call costs for each network size: where the readout path's time goes (issue #11).

The shipped ethanol model's architecture, and variants of it with one setting changed (Fock-trunk width,
depth or angular order; energy trunk), built with random weights (the cost of a call does not depend on the
weights) and timed as the MD step uses them: ``forward(..., energy_only=True)`` (the atom trunks and the
readout MLP, no pair features, no F) plus the autograd gradient with respect to the positions, float64, one
thread, the ``ase.build`` ethanol geometry moved slightly before every call. Also the shipped model itself
through ``WaveCalculator`` in the same run, so the variants' times compare with the calculator's.

What it answers: how much smaller the Fock network must be for an energy+forces call within a time
budget (the issue's 20 ms). A variant's accuracy is not measured here: a smaller Fock network means
retraining F (hours). The Fock trunk's angular order stays 4: d-shell blocks need features up to l = 4
(the model refuses a smaller lmax for def2-SVP).

    python benchmarks/speed_architecture.py                 # ~3 min
    python benchmarks/speed_architecture.py --repeats 10

Writes benchmarks/results/speed_architecture.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from _common import machine_info, table, time_call, write_result

VARIANTS = {   # label: config changes against the shipped model's
    "shipped": {},
    "no energy trunk": {"energy_layers": 0},
    "Fock trunk 2 blocks": {"num_layers": 2},
    "Fock trunk 16 channels": {"channels": 16},
    "Fock trunk 16 ch., 2 blocks, no energy trunk": {"channels": 16, "num_layers": 2, "energy_layers": 0},
    "Fock trunk 2 blocks, no energy trunk": {"num_layers": 2, "energy_layers": 0},
    "Fock trunk 16 channels, no energy trunk": {"channels": 16, "energy_layers": 0},
    "energy trunk lmax 1": {"energy_lmax": 1},
}


def call_cost(model, z, pos0, repeats: int) -> dict:
    """Median seconds of energy_only forward + d(E)/d(positions), new positions each call."""
    import torch

    rng = np.random.default_rng(0)
    batch = torch.zeros(len(z), dtype=torch.long)

    def step():
        pos = torch.as_tensor(pos0 + rng.normal(scale=1e-3, size=pos0.shape)).requires_grad_(True)
        e = model(z, pos, batch, energy_only=True)["energy"].sum()
        torch.autograd.grad(e, pos)

    return time_call(step, repeats, warmup=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ethanol-pbe-def2svp", help="model name or directory")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch
    from ase.build import molecule

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.model import build_model
    from ase_wavecalc.model.config import canonical_config
    from ase_wavecalc.model.io import _resolve as resolve_model_dir
    from ase_wavecalc.units import BOHR

    torch.set_num_threads(1)
    info = machine_info()
    card = json.loads((resolve_model_dir(args.model) / "model.json").read_text())
    base = canonical_config(dict(card["config"]))
    atoms = molecule("CH3CH2OH")
    z = torch.as_tensor(atoms.numbers)
    pos0 = atoms.positions / BOHR

    rows, result = [], {"model": args.model, "variants": {}}
    calc_atoms = atoms.copy()
    calc_atoms.calc = WaveCalculator(model=args.model)
    rng = np.random.default_rng(1)

    def calc_step():
        calc_atoms.positions = atoms.positions + rng.normal(scale=1e-3, size=atoms.positions.shape)
        calc_atoms.get_forces()

    calc = time_call(calc_step, args.repeats, warmup=2)
    rows.append(["shipped model through WaveCalculator", "", f"{1e3 * calc['median_s']:.1f}",
                 f"{1e3 * calc['min_s']:.1f}"])
    result["calculator"] = calc
    for label, change in VARIANTS.items():
        config = {**base, **change}
        torch.manual_seed(0)
        model = build_model(config).double().eval()
        for prm in model.parameters():
            prm.requires_grad_(False)
        n_params = sum(prm.numel() for prm in model.parameters())
        cost = call_cost(model, z, pos0, args.repeats)
        rows.append([label, f"{n_params:,}", f"{1e3 * cost['median_s']:.1f}", f"{1e3 * cost['min_s']:.1f}"])
        result["variants"][label] = {"config_change": change, "parameters": n_params, **cost}
        print(f"{label}: {1e3 * cost['median_s']:.1f} ms", flush=True)
    print(f"\nethanol energy+forces, float64, 1 thread, median of {args.repeats} calls:")
    print(table(["network", "parameters", "ms/call", "min ms"], rows))
    path = write_result("speed_architecture", {"machine": info, **result}, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
