"""Write a small random (untrained) model with a Delta h head: a stand-in for the shipped models.

Only for exercising the examples and benchmarks before trained models exist; its numbers mean nothing.
The card lists a random "test split" of both datasets so that ``accuracy.py`` runs on it::

    python benchmarks/make_standin_model.py --out /tmp/standin-model
    python benchmarks/accuracy.py --model /tmp/standin-model --max-frames 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _mean_blocks(paths, n_frames=10):
    """Mean on-site F block per element from the first frames of the datasets (Hartree, PySCF order)."""
    from ase_wavecalc.basis import BasisLayout
    from ase_wavecalc.dataset import connect

    sums, counts = {}, {}
    for path in paths:
        db = connect(path)
        for row in db.select(f"frame<{n_frames}", include_data=True):
            if not row.get("converged", False):
                continue
            z = [int(v) for v in row.numbers]
            fock = np.asarray(row.data["fock"])
            for za, sl in zip(z, BasisLayout("def2-svp", sorted(set(z))).ao_slices(z)):
                sums[za] = sums.get(za, 0.0) + fock[sl, sl]
                counts[za] = counts.get(za, 0) + 1
    return {z: sums[z] / counts[z] for z in sums}


def _tame(model, paths, weight_scale):
    """Random weights scaled down, on-site biases at the data's mean blocks (a sane, still untrained F)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "readout" in name and name.endswith("weight"):
                p.mul_(weight_scale)
    for z, block in _mean_blocks(paths).items():
        model.set_mean_block(z, block)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="/tmp/standin-model", help="model directory to write")
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--full-size", action="store_true",
                        help="the default architecture (model.network.DEFAULT_CONFIG widths) instead of a small "
                             "one: for realistic timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-test", type=int, default=50, help="test frame ids listed per dataset")
    parser.add_argument("--weight-scale", type=float, default=0.02,
                        help="scale of the random Fock readout weights; the on-site biases are set to the "
                             "mean atom blocks of a few dataset frames, so F starts near a sane scale")
    parser.add_argument("--data", nargs="*", default=[str(ROOT / "data" / "water_pbe_def2svp.db"),
                                                      str(ROOT / "data" / "ethanol_pbe_def2svp.db")])
    args = parser.parse_args(argv)

    import torch

    from ase_wavecalc.dataset import connect, frame_ids
    from ase_wavecalc.model import build_model, default_config
    from ase_wavecalc.model.io import save_model

    torch.manual_seed(args.seed)
    if args.full_size:
        config = default_config(delta_hcore_head=True, elements=[1, 6, 8], basis="def2-svp")
    else:
        config = default_config(delta_hcore_head=True, elements=[1, 6, 8], basis="def2-svp",
                                channels=args.channels, pair_channels=args.channels,
                                num_layers=args.num_layers, radial_hidden=16, pair_hidden=16)
    model = build_model(config).double()
    _tame(model, args.data, args.weight_scale)
    rng = np.random.default_rng(args.seed)
    split = []
    for path in args.data:
        ids = sorted(frame_ids(connect(path), converged=True))
        test = sorted(int(i) for i in rng.choice(ids, size=min(args.n_test, len(ids)), replace=False))
        split.append({"name": Path(path).name, "sha256": None, "test": len(test), "test_frames": test})
    card = {"name": Path(args.out).name, "standin": True, "energy_trained": True, "charge": 0,
            "level_of_theory": {"method": "pbe", "xc": "pbe", "basis": "def2-svp"},
            "note": "random untrained stand-in for testing the examples/benchmarks",
            "split": {"seed": args.seed, "datasets": split}}
    save_model(model, args.out, card)
    n_par = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: random model, {n_par} parameters, channels={config['channels']}, "
          f"layers={config['num_layers']}, test frames listed for {[d['name'] for d in split]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
