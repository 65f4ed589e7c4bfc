"""Import of pre-computed npz sets (the ``shared/data`` format) into a dataset file: ``wavecalc import-npz``.

Reference parts (``*_pbe_def2svp/part-*.npz``: positions, F, energies, gradients, orbital energies, dipoles)
become frames of the dataset (``import_npz``; overlap and core Hamiltonian recomputed with PySCF); label parts
(``*_ccsdt_*/part-*.npz``: high-level energies and forces naming their frames) go onto the rows they name
(``labels.import_label_npz``). Re-runs skip what is already there.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .dataset import (UNITS, DatasetError, _progress, connect, dataset_charge, frame_ids, read_candidates,
                      update_metadata, write_frame)

__all__ = ["import_npz", "add_cli_arguments", "cli_main"]



_NPZ_ARRAYS = ("numbers", "positions", "fock", "e_tot", "gradient", "mo_energy", "dipole_au")


def _symmetric_from_triu(triu) -> np.ndarray:
    """(F, n(n+1)/2) upper triangles (numpy.triu_indices order) -> (F, n, n) symmetric float64 matrices."""
    triu = np.asarray(triu, dtype=np.float64)
    n = int(round((np.sqrt(8 * triu.shape[-1] + 1) - 1) / 2))
    out = np.zeros(triu.shape[:-1] + (n, n))
    iu = np.triu_indices(n)
    out[..., iu[0], iu[1]] = triu
    out[..., iu[1], iu[0]] = triu
    return out


def _source_name(part: Path) -> str:
    return f"{part.parent.name}/{part.name}"


def _npz_metadata(d, basis) -> dict:
    sampler = {"description": str(d["sampler"])}
    try:   # parts written by `wavecalc export-npz` carry the dataset's sampler record as JSON
        parsed = json.loads(str(d["sampler"]))
        if isinstance(parsed, dict):
            sampler = parsed
    except ValueError:
        pass
    xc = str(d["xc"])
    method = "rhf" if xc.lower() in ("hf", "rhf") else "rks"
    grid_level = int(d["grid_level"])
    meta = {
        # as `wavecalc generate` records them: RHF has no grid (export-npz writes grid_level -1 for None)
        "method": method, "xc": "hf" if method == "rhf" else xc, "basis": basis,
        "grid_level": None if method == "rhf" or grid_level < 0 else grid_level,
        "conv_tol": float(d["conv_tol"]), "pyscf_version": str(d["pyscf_version"]), "units": UNITS,
        "sampler": sampler,
    }
    if "conv_tol_grad" in d and np.isfinite(float(d["conv_tol_grad"])):
        meta["conv_tol_grad"] = float(d["conv_tol_grad"])
    if "charge" in d:   # parts of `wavecalc export-npz`; the shared-format parts are neutral
        meta["charge"] = int(d["charge"])
    return meta


class OneElectronIntegrals:
    """S and h = T + V (Hartree, (nao, nao), PySCF AO order) of successive geometries of one molecule, which
    the npz parts do not store: the Mole is built once and moved to each new geometry (~100x faster)."""

    def __init__(self, numbers, basis: str, charge: int = 0):
        self.numbers, self.basis, self.charge, self.mol = numbers, basis, int(charge), None

    def __call__(self, positions_bohr) -> dict:
        from .integrals import make_mol

        if self.mol is None:
            self.mol = make_mol(self.numbers, positions_bohr, self.basis, charge=self.charge)
        else:
            self.mol = self.mol.set_geom_(positions_bohr, unit="Bohr", inplace=False)
        return {"overlap": self.mol.intor("int1e_ovlp"),
                "hcore": self.mol.intor("int1e_kin") + self.mol.intor("int1e_nuc")}


def import_npz(out, parts, max_frames: int | None = None, batch_size: int = 50,
               progress: bool = True) -> dict:
    """Import pre-computed npz parts into the dataset file ``out``; returns a summary dict.

    Overlap and core Hamiltonian are recomputed with PySCF (the npz files do not hold them). Frame
    ids continue after the largest id in ``out``, in the order of ``parts``, unless a part carries a
    ``frame`` array (parts written by ``wavecalc export-npz``): then its ids are kept, so the splits
    computed from them stay valid, and an id already taken by another frame is an error. Each row remembers its
    origin (key-value pairs ``source`` = "<folder>/<file>", ``source_index``, ``temperature``), and a
    re-run skips frames whose origin is already there, so an interrupted import resumes. Frames are
    written ``batch_size`` at a time, each batch one transaction of whole frames.
    ``max_frames``: at most this many frames per part (tests, quick looks).

    Positions: the npz references were run from Angstrom with PySCF's Bohr constant; the Bohr
    positions PySCF used are kept exactly, the Angstrom positions of the rows follow from ASE's Bohr
    (they differ from the npz by ~7e-10 relative).
    """
    from pyscf.data.nist import BOHR as PYSCF_BOHR

    parts = [Path(p) for p in parts]
    for p in parts:
        if not p.is_file():
            raise FileNotFoundError(f"npz part {str(p)!r} does not exist")
    db = connect(out, create=True)
    if read_candidates(db) is not None:
        raise DatasetError(f"{str(out)!r} is a `wavecalc generate` dataset (its frame ids belong to stored "
                           "candidates); import into a separate file")
    done = {}
    next_frame = 0
    for row in db.select(include_data=False):
        if "frame" in row:
            next_frame = max(next_frame, int(row.frame) + 1)
            if "source" in row:
                done.setdefault(row.source, set()).add(int(row.source_index))
    summary = {"written": 0, "skipped": 0, "parts": len(parts), "seconds": 0.0}
    t0 = time.perf_counter()
    total = 0
    for part in parts:
        with np.load(part, allow_pickle=False) as npz:
            n_part = len(npz["e_tot"]) if "e_tot" in npz.files else 0
        total += n_part if max_frames is None else min(max_frames, n_part)
    bar = _progress(total=total, desc=f"import {Path(out).name}", disable=not progress)
    try:
        for part in parts:
            with np.load(part, allow_pickle=False) as npz:
                d = {k: npz[k] for k in npz.files}
            if "fock_triu" in d and "fock" not in d:   # a compact part (export-npz --compact)
                d["fock"] = _symmetric_from_triu(d.pop("fock_triu"))
                d["mo_energy"] = np.asarray(d["mo_energy"], dtype=np.float64)
            missing = [k for k in _NPZ_ARRAYS if k not in d]
            if missing:
                raise DatasetError(f"{str(part)!r} lacks arrays {missing}")
            basis = str(d["basis"])
            source = _source_name(part)
            charge = int(d["charge"]) if "charge" in d else 0
            if frame_ids(db) and dataset_charge(db.metadata) != charge:
                raise DatasetError(f"{str(part)!r} holds molecules of charge {charge}, {str(out)!r} of "
                                   f"charge {dataset_charge(db.metadata)}: import into a separate file")
            meta = update_metadata(db, _npz_metadata(d, basis))
            sources = dict(meta.get("sources", {}))
            n = len(d["positions"]) if max_frames is None else min(max_frames, len(d["positions"]))
            todo = [i for i in range(n) if i not in done.get(source, set())]
            summary["skipped"] += n - len(todo)
            if bar is not None:
                bar.update(n - len(todo))
            numbers = np.asarray(d["numbers"], dtype=int)
            own_ids = np.asarray(d["frame"], dtype=np.int64) if "frame" in d else None
            if own_ids is not None:
                taken = frame_ids(db) & {int(own_ids[i]) for i in todo}
                if taken:
                    raise DatasetError(f"{str(part)!r} keeps its frame ids, and {len(taken)} of them (e.g. "
                                       f"{min(taken)}) are already frames of {str(out)!r}: import into a new file")
            integrals = OneElectronIntegrals(numbers, basis, charge)
            for start in range(0, len(todo), batch_size):
                with db:  # one transaction per batch of whole frames
                    for i in todo[start:start + batch_size]:
                        positions_bohr = np.asarray(d["positions"][i], dtype=float) / PYSCF_BOHR
                        arrays = {
                            "fock": d["fock"][i], **integrals(positions_bohr),
                            "e_tot": d["e_tot"][i], "gradient": d["gradient"][i],
                            "mo_energy": d["mo_energy"][i], "dipole": d["dipole_au"][i],
                        }
                        frame = next_frame if own_ids is None else int(own_ids[i])
                        write_frame(db, frame, numbers, positions_bohr, arrays, converged=True,
                                    source=source, source_index=int(i),
                                    temperature=float(d.get("temperature_K", np.nan)))
                        next_frame = max(next_frame, frame) + 1
                summary["written"] += len(todo[start:start + batch_size])
                if bar is not None:
                    bar.update(len(todo[start:start + batch_size]))
            sources[source] = {"temperature_K": float(d.get("temperature_K", np.nan)),
                               "seed": int(d.get("seed", -1)), "n_frames": int(len(d["positions"]))}
            update_metadata(db, {"sources": sources})
    finally:
        if bar is not None:
            bar.close()
    summary["seconds"] = time.perf_counter() - t0
    summary["frames_in_file"] = len(frame_ids(db, converged=True))
    return summary


# ----------------------------------------------------------------------------------------------------
# command line: `wavecalc import-npz OUT.db PART.npz [PART.npz ...]`


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT.db", help="dataset file to create or extend (ASE SQLite db)")
    parser.add_argument("parts", metavar="PART.npz", nargs="+",
                        help="npz parts (shared/data format): reference frames, or high-level labels of frames "
                             "already imported (parts with source_part/source_frame, e.g. *_ccsdt_*)")
    parser.add_argument("--max-frames", type=int, default=None, help="at most this many frames per part")
    parser.add_argument("--batch-size", type=int, default=50, help="frames per transaction (default 50)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cli_main(args) -> int:
    from .labels import import_label_npz, is_label_npz

    try:
        kinds = {is_label_npz(p) for p in args.parts if Path(p).is_file()}
        if kinds == {True}:   # high-level labels for frames already in OUT.db
            s = import_label_npz(args.out, args.parts, progress=not args.quiet)
            print(f"{args.out}: labeled {s['written']} frames, skipped {s['skipped']} already labeled, "
                  f"{s['labeled_in_file']} labeled frames in file ({s['seconds']:.1f} s)")
            return 0
        if kinds == {True, False}:
            raise DatasetError("import label parts (high-level energies) and reference parts in two calls: "
                               "the reference frames first")
        s = import_npz(args.out, args.parts, max_frames=args.max_frames, batch_size=args.batch_size,
                       progress=not args.quiet)
    except (DatasetError, FileNotFoundError) as exc:
        print(f"wavecalc import-npz: error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: wrote {s['written']} frames, skipped {s['skipped']} already present, "
          f"{s['frames_in_file']} frames in file ({s['seconds']:.1f} s)")
    return 0
