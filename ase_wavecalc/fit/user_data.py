"""``wavecalc fit --data``: frames a user already labelled, checked before any work and trained on.

The frames come as a dataset file (``.db``, e.g. from ``wavecalc generate``) or a folder of npz parts (the
format of ``data/`` and the shared reference sets, ``wavecalc export-npz``). They must be of the molecule
being fitted (same elements, same count of each), its total charge and its level of theory (method,
functional, basis); anything else is refused with a message naming what differs.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .molecule import FitInputError

__all__ = ["check_user_data", "import_user_data"]


def _parts(path: Path) -> list[Path]:
    return sorted(path.glob("part-*.npz"))


def _formula(numbers) -> str:
    from ase import Atoms

    return Atoms(numbers=[int(z) for z in numbers]).get_chemical_formula()


def _read_summary(path: Path) -> tuple[dict, set[str], int]:
    """(reference metadata, the formulas of its frames, number of labelled frames)."""
    from ..dataset import DatasetError, connect, metadata
    from ..npz_import import _npz_metadata

    if path.is_dir():
        parts = _parts(path)
        if not parts:
            raise FitInputError(f"--data {str(path)!r} is a folder without npz parts (part-*.npz)")
        formulas, n, meta = set(), 0, None
        for part in parts:
            with np.load(part, allow_pickle=False) as d:
                meta = meta or _npz_metadata(d, str(d["basis"]))
                formulas.add(_formula(d["numbers"]))
                n += len(d["e_tot"])
        return meta, formulas, n
    try:
        meta = metadata(path)
        rows = list(connect(path).select(converged=True, include_data=False))
    except (DatasetError, OSError, ValueError) as exc:
        raise FitInputError(f"--data {str(path)!r} is not a wavecalc dataset file: {exc}") from None
    return meta, {_formula(r.numbers) for r in rows}, len(rows)


def check_user_data(path, numbers, method: str, basis: str, charge: int) -> int:
    """Refuse (``FitInputError``) frames that are not of this molecule, charge and level of theory; returns
    how many labelled frames ``path`` holds."""
    from ..dataset import DatasetError, check_metadata, dataset_charge
    from ..reference import reference_settings

    path = Path(path)
    if not path.exists():
        raise FitInputError(f"--data {str(path)!r} does not exist")
    meta, formulas, n = _read_summary(path)
    if n == 0:
        raise FitInputError(f"--data {str(path)!r} holds no labelled frames")
    want = _formula(numbers)
    if formulas != {want}:
        raise FitInputError(f"--data {str(path)!r} holds {', '.join(sorted(formulas))} frames; the molecule is "
                            f"{want}")
    settings = reference_settings(method, basis)
    try:
        check_metadata(meta, {k: settings[k] for k in ("method", "xc", "basis")}, f"--data {str(path)!r}")
    except DatasetError as exc:
        raise FitInputError(str(exc)) from None
    if dataset_charge(meta) != int(charge):
        raise FitInputError(f"--data {str(path)!r} holds molecules of charge {dataset_charge(meta)}; the fit's "
                            f"charge is {int(charge)}")
    return n


def import_user_data(path, target: Path) -> int:
    """Copy a dataset file, or import a folder of npz parts (S and h recomputed), to ``target``; returns the
    number of labelled frames. An interrupted npz import resumes (``import_npz`` skips what is there)."""
    from ..dataset import connect, frame_ids

    path, target = Path(path), Path(target)
    if path.is_dir():
        from ..npz_import import import_npz

        import_npz(target, _parts(path), progress=False)
    else:
        tmp = target.with_suffix(".tmp")
        shutil.copyfile(path, tmp)
        tmp.replace(target)
    return len(frame_ids(connect(target), converged=True))
