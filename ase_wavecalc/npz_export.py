"""Export of a dataset file to compressed npz parts in the ``shared/data`` format: ``wavecalc export-npz``.

The inverse of ``wavecalc import-npz``: the datasets behind a shipped model are committed as these parts
(float64, a few MB each) and re-imported on a fresh machine. Each part holds, besides the arrays of the
shared format (numbers, positions in Angstrom, fock, e_tot, gradient, mo_energy, dipole_au and the
level-of-theory scalars), ``charge``, ``conv_tol_grad`` (NaN: not recorded) and ``frame``: the frame ids
of the exported rows, which ``import-npz`` keeps, so a file made by ``wavecalc generate`` (whose ids are
candidate indices, with gaps where a frame failed) comes back with the same ids and every split computed
from them (model cards, configs) stays valid.
Overlap and core Hamiltonian are not stored (recomputed exactly on import).

``compact=True`` (``--compact``; what ``wavecalc fit`` writes) stores F once per symmetric pair, as the
upper triangle (``numpy.triu_indices``, row-major) in float32 (``fock_triu``, with ``fock_storage`` naming
the layout), and the orbital energies in float32: an error of at most ~1e-6 Hartree on core diagonal elements
of F (float32 keeps 24 bits of a ~20 Hartree value) and ~1e-8 on typical elements, far below any model's
error (>= 1e-5 Hartree), at about a quarter of the size (uracil/def2-SVP: 35 kB a frame instead of 139 kB).
Positions, energies, gradients and dipoles stay float64.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["export_npz", "add_cli_arguments", "cli_main"]


def export_npz(path, out_dir, part_size: int = 100, progress: bool = True, compact: bool = False) -> list[Path]:
    """Write the converged frames of dataset ``path`` as ``out_dir/part-NNN.npz`` (``part_size`` frames each,
    in frame order); returns the written paths. Refuses a non-empty ``out_dir`` (parts of two exports must
    not mix) and a file whose frames lack any array of the format."""
    from pyscf.data.nist import BOHR as PYSCF_BOHR

    from .dataset import DatasetError, connect, dataset_charge, read_dataset

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise DatasetError(f"{str(out_dir)!r} is not empty: export into a new folder")
    data = read_dataset(path, keys=["fock", "e_tot", "gradient", "mo_energy", "dipole"])
    if not len(data["frame"]):
        raise DatasetError(f"{str(path)!r} has no converged frames to export")
    meta = dict(connect(path).metadata)
    if str(meta.get("method", "rks")) not in ("rks", "rhf"):
        raise DatasetError(f"{str(path)!r} holds {meta.get('method')!r} references; the npz format is RKS/RHF")
    sampler = meta.get("sampler") or {}
    scalars = {
        "xc": str(meta.get("xc") or "hf"), "basis": str(meta["basis"]), "conv_tol": float(meta["conv_tol"]),
        "charge": dataset_charge(meta),
        "conv_tol_grad": np.nan if meta.get("conv_tol_grad") is None else float(meta["conv_tol_grad"]),
        "grid_level": int(meta.get("grid_level") if meta.get("grid_level") is not None else -1),
        "pyscf_version": str(meta.get("pyscf_version", "")),
        "sampler": json.dumps(sampler, sort_keys=True),
        "temperature_K": float(sampler.get("temperature_K", np.nan)),
        "seed": int(sampler.get("seed", -1)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    n = len(data["frame"])
    for k, start in enumerate(range(0, n, part_size)):
        sl = slice(start, min(n, start + part_size))
        target = out_dir / f"part-{k:03d}.npz"
        tmp = out_dir / f".part-{k:03d}.tmp.npz"
        if compact:
            iu = np.triu_indices(data["fock"].shape[-1])
            matrices = {"fock_triu": data["fock"][sl][:, iu[0], iu[1]].astype(np.float32),
                        "fock_storage": "upper triangle (numpy.triu_indices), float32",
                        "mo_energy": data["mo_energy"][sl].astype(np.float32)}
        else:
            matrices = {"fock": data["fock"][sl], "mo_energy": data["mo_energy"][sl]}
        np.savez_compressed(
            tmp, numbers=np.asarray(data["numbers"], dtype=np.int64),
            positions=np.asarray(data["positions_bohr"][sl], dtype=np.float64) * PYSCF_BOHR,
            e_tot=data["e_tot"][sl], gradient=data["gradient"][sl], dipole_au=data["dipole"][sl], **matrices,
            frame=np.asarray(data["frame"][sl], dtype=np.int64), **scalars)
        tmp.replace(target)
        written.append(target)
        if progress:
            print(f"  {target}: frames {int(data['frame'][sl][0])}-{int(data['frame'][sl][-1])}", flush=True)
    return written


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", metavar="DATA.db", help="dataset file (wavecalc generate or import-npz)")
    parser.add_argument("out", metavar="OUT_DIR", help="new folder for the parts (part-000.npz, ...)")
    parser.add_argument("--part-size", type=int, default=100, help="frames per part (default 100)")
    parser.add_argument("--compact", action="store_true",
                        help="F as a float32 upper triangle, orbital energies float32 (about 1/4 of the size)")
    parser.add_argument("--quiet", action="store_true")


def cli_main(args) -> int:
    from .dataset import DatasetError

    try:
        parts = export_npz(args.dataset, args.out, part_size=args.part_size, progress=not args.quiet,
                           compact=args.compact)
    except (DatasetError, FileNotFoundError) as exc:
        print(f"wavecalc export-npz: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dataset}: {len(parts)} parts in {args.out}")
    return 0
