"""The dataset file: one ASE database (SQLite) per dataset, one row per frame.

SQLite makes every write a transaction, so a process killed at any moment (``kill -9``) leaves either a
whole frame or nothing; ``wavecalc generate`` and ``wavecalc import-npz`` resume by skipping frames that
are already there. A unique index on the ``frame`` key makes duplicates impossible, even from two
writers at once.

Row layout (one frame):

| where | name | shape | unit |
|---|---|---|---|
| atoms | numbers, positions | (n,), (n, 3) | -, Angstrom |
| atoms.calc (SinglePointCalculator) | energy, forces, dipole | (), (n, 3), (3,) | eV, eV/Angstrom, e*Angstrom |
| key_value_pairs | frame | int | index of the candidate geometry, unique in the file |
| key_value_pairs | converged | bool | False: SCF failed, row holds no reference data |
| data | see ``FRAME_KEYS`` | | atomic units |

``db.metadata``: method, xc, basis, grid_level, conv_tol, pyscf_version, units (key -> unit) and
sampler settings. ``read_dataset`` returns the converged frames of one composition as stacked arrays in
atomic units (``ARRAY_KEYS``).

Extra table ``wavecalc_candidates`` (same file): the candidate geometries of ``wavecalc generate``,
stored before any reference runs so that a re-run knows them (``write_candidates``/``read_candidates``).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from .units import BOHR, bohr_to_angstrom, gradient_au_to_forces_ev, hartree_to_ev

# Reference arrays of one frame, as stored in a row's ``data`` and returned by reference.run_reference.
# name -> (shape, unit)
FRAME_KEYS: dict[str, tuple[str, str]] = {
    "fock": ("(nao, nao)", "Hartree"),        # converged KS/Fock matrix (mf.get_fock()), PySCF AO order
    "overlap": ("(nao, nao)", "1"),            # AO overlap S
    "hcore": ("(nao, nao)", "Hartree"),       # core Hamiltonian T + V_nuc
    "e_tot": ("()", "Hartree"),               # total energy (incl. nuclear repulsion)
    "gradient": ("(n_atoms, 3)", "Hartree/Bohr"),  # dE/dR, forces are minus this
    "mo_energy": ("(nao,)", "Hartree"),       # orbital energies
    "dipole": ("(3,)", "e*Bohr"),             # total dipole (nuclei + electrons), origin 0
}

# High-level labels a row may carry besides (see ``ase_wavecalc.labels``): name -> (shape, unit)
LABEL_KEYS: dict[str, tuple[str, str]] = {
    "high_e_tot": ("()", "Hartree"),
    "high_gradient": ("(n_atoms, 3)", "Hartree/Bohr, NaN where not computed"),
}

# Arrays returned by read_dataset: name -> (shape, unit); F = number of converged frames.
ARRAY_KEYS: dict[str, tuple[str, str]] = {
    "numbers": ("(n_atoms,)", "atomic number"),
    "positions_bohr": ("(F, n_atoms, 3)", "Bohr"),
    "fock": ("(F, nao, nao)", "Hartree"),
    "overlap": ("(F, nao, nao)", "1"),
    "hcore": ("(F, nao, nao)", "Hartree"),
    "e_tot": ("(F,)", "Hartree"),
    "gradient": ("(F, n_atoms, 3)", "Hartree/Bohr"),
    "mo_energy": ("(F, nao)", "Hartree"),
    "dipole": ("(F, 3)", "e*Bohr"),
    "frame": ("(F,)", "frame id"),
    "high_e_tot": ("(F,)", "Hartree, high-level label (only when asked for)"),
    "high_gradient": ("(F, n_atoms, 3)", "Hartree/Bohr, high-level label, NaN where not computed"),
}

# db.metadata["units"]: row data in atomic units, the ASE atoms/calculator in ASE units
UNITS: dict[str, dict[str, str]] = {
    "data": {name: unit for name, (_, unit) in FRAME_KEYS.items()},
    "atoms": {"positions": "Angstrom", "energy": "eV", "forces": "eV/Angstrom", "dipole": "e*Angstrom"},
}

# Metadata entries that must agree when frames are added to an existing file.
REFERENCE_SETTINGS = ("method", "xc", "basis", "grid_level", "conv_tol")

CANDIDATE_TABLE = "wavecalc_candidates"

__all__ = ["FRAME_KEYS", "LABEL_KEYS", "ARRAY_KEYS", "DatasetError", "connect", "frame_ids", "write_frame",
           "check_metadata", "update_metadata", "metadata", "dataset_charge", "read_dataset",
           "write_candidates", "read_candidates", "formula"]


class DatasetError(ValueError):
    """A dataset file is missing required content, corrupt, or inconsistent with what is asked."""


# ----------------------------------------------------------------------------------------------------
# opening


def connect(path, create: bool = False):
    """Open the dataset file ``path`` (an ASE SQLite database) and return the ASE database object.

    ``create=False`` (readers): the file must exist (ASE would silently create an empty one) and be an
    ASE SQLite database, else ``FileNotFoundError`` / ``DatasetError``; nothing is written.
    ``create=True`` (writers): the file is created if missing, and the unique index on ``frame``.
    """
    import ase.db

    path = Path(path)
    if not create and not path.is_file():
        raise FileNotFoundError(f"dataset file {str(path)!r} does not exist")
    if path.suffix != ".db":
        raise DatasetError(f"dataset file {str(path)!r}: the name must end in .db (ASE SQLite database)")
    if path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise DatasetError(f"{str(path)!r} is not an SQLite database (corrupt or another format)")
    path.parent.mkdir(parents=True, exist_ok=True)
    db = ase.db.connect(str(path), type="db", append=True)
    try:
        with db.managed_connection() as con:
            if create:  # writers: a second row with the same frame id fails with sqlite3.IntegrityError
                con.execute("CREATE UNIQUE INDEX IF NOT EXISTS wavecalc_unique_frame "
                            "ON number_key_values(value) WHERE key = 'frame'")
            else:  # readers never write (read-only files work); still check the file is readable
                con.execute("SELECT COUNT(*) FROM systems").fetchone()
    except (sqlite3.DatabaseError, OSError) as exc:
        raise DatasetError(f"{str(path)!r}: cannot read as an ASE database: {exc}") from exc
    return db


def _guard(path, what):
    """Context for reads: SQLite/ASE decoding errors become DatasetError with the file name."""
    class _G:
        def __enter__(self):
            return self

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None and issubclass(exc_type, (sqlite3.DatabaseError, ValueError, KeyError,
                                                              TypeError, EOFError)) \
                    and not issubclass(exc_type, DatasetError):
                raise DatasetError(f"{str(path)!r}: {what} failed, the file looks corrupt: "
                                   f"{exc_type.__name__}: {exc}") from exc
            return False
    return _G()


# ----------------------------------------------------------------------------------------------------
# writing


def frame_ids(db, converged: bool | None = None) -> set[int]:
    """Frame ids present in ``db`` (all, or only rows with the given ``converged`` flag)."""
    out = set()
    for row in db.select(include_data=False):
        if "frame" not in row:
            continue
        if converged is not None and bool(row.get("converged", False)) != converged:
            continue
        out.add(int(row.frame))
    return out


def _row_content(frame, numbers, positions_bohr, arrays, converged, key_value_pairs):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    positions_bohr = np.asarray(positions_bohr, dtype=float).reshape(len(numbers), 3)
    atoms = Atoms(numbers=numbers, positions=bohr_to_angstrom(positions_bohr))
    kvp = dict(key_value_pairs)
    kvp["frame"] = int(frame)
    kvp["converged"] = bool(converged)
    data = {}
    if converged:
        missing = [k for k in FRAME_KEYS if k not in arrays]
        if missing:
            raise DatasetError(f"frame {frame}: converged frame without {missing}")
        data = {k: np.array(arrays[k], dtype=float, order="C") for k in FRAME_KEYS}
        nao = data["fock"].shape[0]
        for k in ("fock", "overlap", "hcore"):
            if data[k].shape != (nao, nao):
                raise DatasetError(f"frame {frame}: {k} has shape {data[k].shape}, expected {(nao, nao)}")
        if data["gradient"].shape != (len(numbers), 3) or data["mo_energy"].shape != (nao,) \
                or data["dipole"].shape != (3,) or data["e_tot"].shape != ():
            raise DatasetError(f"frame {frame}: inconsistent array shapes")
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(hartree_to_ev(data["e_tot"])),
            forces=gradient_au_to_forces_ev(data["gradient"]), dipole=bohr_to_angstrom(data["dipole"]))
    return atoms, kvp, data


def write_frame(db, frame: int, numbers, positions_bohr, arrays: dict | None = None,
                converged: bool = True, **key_value_pairs) -> int:
    """Write one frame as one row; returns the row id.

    ``arrays``: the ``FRAME_KEYS`` arrays in atomic units (required when ``converged``). A frame that
    did not converge is written with ``converged=False`` and no reference data (``read_dataset`` skips
    it). Outside ``with db:`` the row is its own transaction; inside, it commits with the batch.
    Extra ``key_value_pairs`` (str/int/float/bool) are stored as ASE key-value pairs.
    """
    atoms, kvp, data = _row_content(frame, numbers, positions_bohr, arrays or {}, converged,
                                    key_value_pairs)
    try:
        return db.write(atoms, key_value_pairs=kvp, data=data)
    except sqlite3.IntegrityError as exc:
        raise DatasetError(f"frame {frame} is already in {db.filename!r}") from exc


def check_metadata(old: dict, new: dict, where: str = "the dataset") -> None:
    """Raise DatasetError if a reference setting (``REFERENCE_SETTINGS``) differs between ``old`` and
    ``new`` (mixing e.g. two basis sets would silently spoil a training set)."""
    for key in REFERENCE_SETTINGS:
        if key in old and key in new and not _same(old[key], new[key]):
            raise DatasetError(f"{where} holds {key}={old[key]!r}, cannot add frames with {key}={new[key]!r}")


def update_metadata(db, new: dict) -> dict:
    """Merge ``new`` into ``db.metadata`` after ``check_metadata``; returns the merged metadata.

    Reference settings already present are kept; other entries are added or replaced.
    """
    old = db.metadata
    check_metadata(old, new, repr(db.filename))
    merged = {**old, **{k: v for k, v in new.items() if k not in old or k not in REFERENCE_SETTINGS}}
    if merged != old:
        db.metadata = merged
    return merged


def _same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return str(a).lower() == str(b).lower()


# ----------------------------------------------------------------------------------------------------
# reading


def metadata(path) -> dict:
    """``db.metadata`` of the dataset file ``path`` (method, xc, basis, ..., units, sampler)."""
    db = connect(path)
    with _guard(path, "reading metadata"):
        return db.metadata


def dataset_charge(meta: dict) -> int:
    """The total charge of a dataset's molecules from its metadata: ``charge``, else the sampler's
    (``wavecalc generate --charge`` records it there), else 0."""
    if meta.get("charge") is not None:
        return int(meta["charge"])
    sampler = meta.get("sampler")
    if isinstance(sampler, dict) and sampler.get("charge") is not None:
        return int(sampler["charge"])
    return 0


def read_dataset(path, keys=None, converged_only: bool = True) -> dict[str, np.ndarray]:
    """Stack the converged frames of a dataset file into arrays (atomic units), sorted by frame.

    Returns ``ARRAY_KEYS``: numbers (n,), positions_bohr (F, n, 3), fock/overlap/hcore (F, nao, nao),
    e_tot (F,), gradient (F, n, 3), mo_energy (F, nao), dipole (F, 3), frame (F,). ``keys`` limits the
    data arrays loaded (numbers, positions_bohr and frame always come). Asking for a high-level label
    (``LABEL_KEYS``: high_e_tot, high_gradient) returns only the frames with a converged label. All
    frames must have the same
    atoms in the same order, else DatasetError. ``converged_only=False`` is for inspection and only
    works with ``keys=()`` (failed frames have no data).
    """
    keys = list(FRAME_KEYS) if keys is None else list(keys)
    unknown = [k for k in keys if k not in FRAME_KEYS and k not in LABEL_KEYS]
    if unknown:
        raise KeyError(f"unknown dataset keys {unknown}; known: {list(FRAME_KEYS) + list(LABEL_KEYS)}")
    labeled_only = any(k in LABEL_KEYS for k in keys)
    if not converged_only and keys:
        raise ValueError("converged_only=False needs keys=() (frames that failed hold no data)")
    db = connect(path)
    numbers = None
    frames, positions = [], []
    stacks = {k: [] for k in keys}
    with _guard(path, "reading frames"):
        for row in db.select(include_data=bool(keys)):
            if "frame" not in row:
                continue
            if converged_only and not bool(row.get("converged", False)):
                continue
            if labeled_only and not bool(row.get("high_converged", False)):
                continue
            if numbers is None:
                numbers = np.array(row.numbers, dtype=np.int64)
            elif len(row.numbers) != len(numbers) or np.any(row.numbers != numbers):
                raise DatasetError(f"{str(path)!r} mixes compositions ({row.formula} in frame {row.frame} vs "
                                   f"{formula(numbers)}); read_dataset stacks one composition per file")
            frames.append(int(row.frame))
            positions.append(np.array(row.positions, dtype=float) / BOHR)
            for k in keys:
                if k not in row.data:
                    raise DatasetError(f"{str(path)!r}: frame {row.frame} has no {k!r} data")
                stacks[k].append(np.asarray(row.data[k], dtype=float))
    if numbers is None:
        raise DatasetError(f"{str(path)!r} holds no {'converged ' if converged_only else ''}frames")
    order = np.argsort(frames, kind="stable")
    out = {"numbers": numbers, "frame": np.asarray(frames, dtype=np.int64)[order],
           "positions_bohr": np.stack(positions)[order]}
    for k in keys:
        try:
            out[k] = np.stack(stacks[k])[order]
        except ValueError as exc:
            raise DatasetError(f"{str(path)!r}: {k!r} arrays differ in shape between frames "
                               "(mixed basis sets?)") from exc
    return out


def formula(numbers) -> str:
    """Chemical formula (ASE's default order) of atomic numbers (n,)."""
    from ase import Atoms
    return Atoms(numbers=[int(z) for z in numbers]).get_chemical_formula()


# ----------------------------------------------------------------------------------------------------
# candidate geometries of `wavecalc generate`


def write_candidates(db, numbers, positions_bohr, info: dict | None = None) -> None:
    """Store candidate geometries (frame ids 0..F-1) and merge ``info`` into the metadata, in one
    transaction.

    If the file already has candidates, they must be identical to the first of the new ones (a
    longer run of the same deterministic trajectory): the extra ones are appended. Anything else
    (other molecule, seed, temperature) raises DatasetError.
    """
    numbers = np.asarray(numbers, dtype=np.int32).reshape(-1)
    positions_bohr = np.asarray(positions_bohr, dtype=np.float64).reshape(-1, len(numbers), 3)
    old = read_candidates(db)
    start = 0
    if old is not None:
        start = len(old[1])
        prefix = (np.array_equal(old[0], numbers) and start <= len(positions_bohr)
                  and np.array_equal(old[1], positions_bohr[:start]))
        if not prefix:
            raise DatasetError(f"{db.filename!r} already holds {start} different candidate geometries "
                               "(other molecule, seed, temperature or MD settings?); use another file")
    with db:  # one transaction: table, rows and metadata together or not at all
        con = db.connection
        con.execute(f"CREATE TABLE IF NOT EXISTS {CANDIDATE_TABLE} "
                    "(frame INTEGER PRIMARY KEY, numbers BLOB, positions_bohr BLOB)")
        con.executemany(f"INSERT INTO {CANDIDATE_TABLE} VALUES (?, ?, ?)",
                        [(i, numbers.tobytes(), np.ascontiguousarray(positions_bohr[i]).tobytes())
                         for i in range(start, len(positions_bohr))])
        if info:
            update_metadata(db, info)


def read_candidates(db):
    """(numbers (n,), positions_bohr (F, n, 3)) of the stored candidates, or None if there are none."""
    with db.managed_connection() as con:
        has = con.execute("SELECT COUNT(*) FROM sqlite_master WHERE type='table' AND name=?",
                          (CANDIDATE_TABLE,)).fetchone()[0]
        if not has:
            return None
        rows = con.execute(f"SELECT frame, numbers, positions_bohr FROM {CANDIDATE_TABLE} "
                           "ORDER BY frame").fetchall()
    if not rows:
        return None
    numbers = np.frombuffer(rows[0][1], dtype=np.int32).astype(np.int64)
    positions = np.stack([np.frombuffer(r[2], dtype=np.float64).reshape(len(numbers), 3) for r in rows])
    if [r[0] for r in rows] != list(range(len(rows))):
        raise DatasetError(f"{db.filename!r}: candidate table is not numbered 0..{len(rows) - 1}")
    return numbers, positions


def _progress(total, desc, disable):
    if disable:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="frame", dynamic_ncols=True)
