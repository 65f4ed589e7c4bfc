"""High-level labels on the frames of a dataset: energies (and forces) of a second level of theory.

A transfer-learned model is trained on frames that carry both the low-level reference (the Hamiltonian F,
energy and forces of the dataset's own method) and a high-level energy (CCSD(T), MP2), forces where they
were computed. The labels live in the same rows as the low-level data, so that the two can never be
paired with the wrong geometry:

| where | name | shape | unit |
|---|---|---|---|
| row ``data`` | high_e_tot | () | Hartree (NaN: the high-level calculation failed) |
| row ``data`` | high_gradient | (n_atoms, 3) | Hartree/Bohr (NaN: not computed, e.g. ``--energies-only``) |
| key_value_pairs | high_converged | bool | False: stored as failed, left out of training |
| ``db.metadata["high_level"]`` | method, basis, reference, frozen_core, forces, pyscf_version, ... | | |

``read_dataset(path, keys=[..., "high_e_tot"])`` returns only the frames with a converged label.
Two ways in: ``wavecalc import-npz`` of pre-computed label parts (``shared/data/*_ccsdt_*`` format,
matched to rows by their ``source`` part and index), and ``wavecalc generate DATA.db --geometries
--method ccsd(t) --out DATA.db`` (computed here, one transaction per frame, resumable).
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .dataset import LABEL_KEYS, DatasetError, _progress, connect, read_dataset, update_metadata

__all__ = ["LABEL_KEYS", "LABEL_MODES", "read_labeled", "write_label", "labeled_frames", "check_level", "import_label_npz", "is_label_npz",
           "label_frames"]

#: what a training or evaluation reads as its energy and forces: the dataset's own ("reference"), the high-level
#: labels ("high"), or high minus own ("delta", for Delta-learning)
LABEL_MODES = ("reference", "high", "delta")


def read_labeled(path, keys, labels: str = "reference") -> dict:
    """``read_dataset(path, keys)`` with ``e_tot`` and ``gradient`` taken from the labels (``LABEL_MODES``).

    With "high" or "delta" only the frames with a converged label come, ``gradient`` is NaN where the label
    has no forces, and the dataset's own gradient is returned as ``low_gradient`` too."""
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    keys = list(keys)
    if labels == "reference":
        return read_dataset(path, keys=keys)
    own = [k for k in ("e_tot", "gradient") if k not in keys]
    data = read_dataset(path, keys=[*keys, *own, "high_e_tot", "high_gradient"])
    data["low_gradient"] = data["gradient"]
    high_e, high_g = data.pop("high_e_tot"), data.pop("high_gradient")
    if labels == "delta":
        high_e, high_g = high_e - data["e_tot"], high_g - data["gradient"]
    data["e_tot"], data["gradient"] = high_e, high_g
    return data


#: entries of ``high_level`` that must agree when labels are added to a file that already has some
_LEVEL_KEYS = ("method", "basis", "reference", "frozen_core")


def check_level(db, level: dict) -> dict:
    """Store ``level`` as ``db.metadata["high_level"]``, or check it against the one there (a second
    method or basis in the same labels would spoil a training set silently)."""
    old = db.metadata.get("high_level")
    if old:
        for k in _LEVEL_KEYS:
            if k in old and k in level and str(old[k]).lower() != str(level[k]).lower():
                raise DatasetError(f"{db.filename!r} holds {old['method']}/{old['basis']} labels ({k}="
                                   f"{old[k]!r}); cannot add labels with {k}={level[k]!r}: use a copy of the file")
        merged = {**level, **{k: old[k] for k in _LEVEL_KEYS if k in old}}
        if old.get("forces") not in (None, level.get("forces")):
            merged["forces"] = "mixed: " + ", ".join(sorted({str(old["forces"]).replace("mixed: ", ""),
                                                            str(level.get("forces"))}))
    else:
        merged = dict(level)
    update_metadata(db, {"high_level": merged})
    return merged


def labeled_frames(db) -> dict[int, bool]:
    """{frame id: converged} of the rows that carry a high-level label (failed ones included)."""
    out = {}
    for row in db.select(include_data=False):
        if "frame" in row and "high_converged" in row:
            out[int(row.frame)] = bool(row.high_converged)
    return out


def _row_ids(db) -> dict[int, int]:
    return {int(row.frame): row.id for row in db.select(include_data=False) if "frame" in row}


def write_label(db, row_id: int, n_atoms: int, e_tot: float, gradient=None, converged: bool = True) -> None:
    """Add (or replace) the label of one row; outside ``with db:`` it is its own transaction."""
    grad = np.full((n_atoms, 3), np.nan) if gradient is None else np.asarray(gradient, dtype=float)
    if grad.shape != (n_atoms, 3):
        raise DatasetError(f"row {row_id}: high-level gradient of shape {grad.shape}, expected {(n_atoms, 3)}")
    e = float(e_tot) if converged else float("nan")
    db.update(row_id, data={"high_e_tot": np.asarray(e), "high_gradient": grad}, high_converged=bool(converged))


# ----------------------------------------------------------------------------------------------------
# pre-computed label parts (shared/data/*_ccsdt_*/part-*.npz)


@contextmanager
def _ticker(total, desc: str, progress: bool):
    """A progress bar's ``update(1)`` as a function (a no-op without ``progress``); closed on exit."""
    bar = _progress(total=total, desc=desc, disable=not progress)
    try:
        yield (lambda: bar.update(1)) if bar is not None else (lambda: None)
    finally:
        if bar is not None:
            bar.close()


def is_label_npz(path) -> bool:
    """True for an npz of high-level labels (it names the frames of another set: ``source_part``)."""
    with np.load(path, allow_pickle=False) as npz:
        return "source_part" in npz.files and "fock" not in npz.files


def import_label_npz(out, parts, progress: bool = True) -> dict:
    """Attach the labels of npz ``parts`` to the rows of ``out`` they name; returns a summary dict.

    Each label names its frame by ``source_set``/``source_part`` and ``source_frame``, which must match a
    row imported from that part (key-value pairs ``source``, ``source_index``); its positions must equal
    the row's to 1e-8 Angstrom. Rows already labeled are skipped, so a re-run resumes.
    """
    parts = [Path(p) for p in parts]
    db = connect(out, create=False)
    rows = {}
    for row in db.select(include_data=False):
        if "source" in row:
            rows[(str(row.source), int(row.source_index))] = (row.id, int(row.frame), np.array(row.positions))
    done = labeled_frames(db)
    summary = {"written": 0, "skipped": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    with _ticker(None, f"labels {Path(out).name}", progress) as tick:
        for part in parts:
            with np.load(part, allow_pickle=False) as npz:
                d = {k: npz[k] for k in npz.files}
            method = str(d["method"])
            forces = str(d.get("forces", "unknown"))
            level = {"method": method, "basis": str(d["basis"]).lower(), "reference": str(d.get("reference", "")),
                     "frozen_core": bool(d.get("frozen_core", False)), "forces": forces,
                     "conv_tol_scf": float(d.get("conv_tol_scf", np.nan)),
                     "conv_tol_ccsd": float(d.get("conv_tol_ccsd", np.nan)),
                     "pyscf_version": str(d.get("pyscf_version", "")), "source": f"{part.parent.name}"}
            with db:
                check_level(db, level)
                for i in range(len(d["e_tot"])):
                    key = (f"{d['source_set']}/{d['source_part'][i]}", int(d["source_frame"][i]))
                    if key not in rows:
                        raise DatasetError(f"{part}: label {i} names {key[0]} frame {key[1]}, which is not in "
                                           f"{str(out)!r} (import that part of the low-level set first)")
                    row_id, frame, pos = rows[key]
                    if np.abs(pos - d["positions"][i]).max() > 1e-8:
                        raise DatasetError(f"{part}: label {i} has other positions than frame {frame} of {out}")
                    if frame in done:
                        summary["skipped"] += 1
                        continue
                    write_label(db, row_id, len(pos), d["e_tot"][i], d["gradient"][i])
                    done[frame] = True
                    summary["written"] += 1
                    tick()
    summary["seconds"] = time.perf_counter() - t0
    summary["labeled_in_file"] = sum(done.values())
    return summary


# ----------------------------------------------------------------------------------------------------
# computed here: `wavecalc generate DATA.db --geometries --method ccsd(t) --out DATA.db`


def _label_task(frame, numbers, positions_bohr, options):
    from .correlated import run_correlated
    from .reference import ReferenceNotConverged

    try:
        r = run_correlated(numbers, positions_bohr, options["method"], options["basis"],
                           gradient=options["gradient"], charge=options["charge"],
                           max_cycle=options["max_cycle"])
    except ReferenceNotConverged as exc:
        return frame, "failed", str(exc), None
    return frame, "ok", r["e_tot"], r["gradient"]


def label_frames(path, method: str, basis: str, gradient: bool = True, max_frames: int | None = None,
                 frames=None, retry_failed: bool = False, max_cycle: int = 100, executor=None,
                 progress: bool = True, log=print) -> dict:
    """Compute high-level labels for the converged frames of dataset ``path`` that lack one.

    ``frames``: only these frame ids; ``max_frames``: at most this many (in frame order). Each finished
    frame is written at once in its own transaction, so an interrupted run loses nothing and a re-run
    continues. ``executor``: a ``concurrent.futures`` executor (default: in this process).
    """
    from .correlated import correlated_settings
    from .dataset import BOHR, dataset_charge

    level = correlated_settings(method, basis, gradient)
    db = connect(path, create=False)
    with db:
        check_level(db, level)
        charge = dataset_charge(db.metadata)
    done = labeled_frames(db)
    ids = _row_ids(db)
    todo = []
    for row in db.select("converged=1", include_data=False):
        f = int(row.frame)
        if frames is not None and f not in frames:
            continue
        if f in done and (done[f] or not retry_failed):
            continue
        todo.append((f, row.id, np.array(row.numbers), np.array(row.positions) / BOHR))
    todo.sort()
    if max_frames is not None:
        todo = todo[:max_frames]
    summary = {"computed": 0, "failed": [], "already_done": len(done), "seconds": 0.0}
    log(f"{path}: {len(done)} frames labeled, computing {len(todo)} ({level['method']}/{level['basis']}, "
        f"forces: {level['forces']})")
    options = {"method": method, "basis": basis, "gradient": gradient, "charge": charge, "max_cycle": max_cycle}
    t0 = time.perf_counter()
    with _ticker(len(todo), "labels", progress) as tick:
        if executor is None:
            results = (_label_task(f, z, r, options) for f, _, z, r in todo)
        else:
            futs = [executor.submit(_label_task, f, z, r, options) for f, _, z, r in todo]
            results = (fut.result() for fut in futs)
        n_atoms = len(todo[0][2]) if todo else 0
        for frame, status, value, grad in results:
            if status == "ok":
                write_label(db, ids[frame], n_atoms, float(value), grad)
                summary["computed"] += 1
            else:
                write_label(db, ids[frame], n_atoms, float("nan"), None, converged=False)
                summary["failed"].append(frame)
            tick()
    summary["seconds"] = time.perf_counter() - t0
    return summary
