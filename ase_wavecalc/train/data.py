"""Dataset arrays -> torch batches for training and evaluation.

A ``FrameTable`` holds the frames of one dataset file (one composition) as tensors; a ``Batch`` is a
set of rows of one table in the model's input layout (atoms of all structures concatenated, ``batch``
telling which structure each atom belongs to). Batches never mix compositions, so the model returns one
stacked ``(B, nao, nao)`` Fock tensor.

| Batch field | shape | unit |
|---|---|---|
| numbers | (B*n,) | atomic number |
| positions_bohr | (B*n, 3) | Bohr |
| batch | (B*n,) | structure index 0..B-1 |
| fock, overlap | (B, nao, nao) | Hartree, 1 |
| mo_energy | (B, nao) | Hartree, eigenvalues of the reference (F, S) |
| e_tot | (B,) | Hartree, always float64 (only when loaded) |
| gradient | (B, n, 3) | Hartree/Bohr (only when loaded; NaN rows: no forces for that structure) |
| low_gradient | (B, n, 3) | Hartree/Bohr: the low-level gradient when the table trains on high-level labels |
| hcore | (B, nao, nao) | Hartree (only when loaded) |
| base_energy, base_gradient | (B,), (B, n, 3) | Hartree, Hartree/Bohr: energy and gradient of a frozen Hamiltonian, computed once (``run.trainable = "atom_correction"``), always float64 |
| frame | (B,) | frame ids of the dataset file |

Data order: ``epoch_plan`` draws the batches of one epoch from a ``torch.Generator`` (shuffled rows
within each table, then shuffled batch order across tables), so a saved generator state reproduces an
epoch exactly.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["FrameTable", "Batch", "load_table", "file_sha256", "split_frames", "epoch_plan",
           "iterate_batches", "read_frame_ids", "BASE_KEYS", "ENERGY_KEYS"]

BASE_KEYS = ("fock", "overlap")
ENERGY_KEYS = ("e_tot", "gradient", "hcore", "low_gradient")
BASE_ENERGY_KEYS = ("base_energy", "base_gradient")   # set by the trainer, not read from files


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Batch:
    numbers: torch.Tensor
    positions_bohr: torch.Tensor
    batch: torch.Tensor
    fock: torch.Tensor
    overlap: torch.Tensor
    mo_energy: torch.Tensor
    frame: torch.Tensor
    n_occ: int
    ao_atom: torch.Tensor
    table: int = 0
    e_tot: torch.Tensor | None = None
    gradient: torch.Tensor | None = None
    hcore: torch.Tensor | None = None
    low_gradient: torch.Tensor | None = None
    base_energy: torch.Tensor | None = None
    base_gradient: torch.Tensor | None = None
    basis: str = ""
    charge: int = 0

    def to(self, device) -> "Batch":
        """This batch with every tensor on ``device`` (itself when they are there already)."""
        import dataclasses

        device = torch.device(device)
        if self.positions_bohr.device == device:
            return self
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).to(device)
                                            for f in dataclasses.fields(self)
                                            if isinstance(getattr(self, f.name), torch.Tensor)})

    @property
    def n_structures(self) -> int:
        return int(self.fock.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0]) // self.n_structures


@dataclass
class FrameTable:
    """The frames of one dataset file as tensors (float64, converted per batch to the training dtype).

    ``rows`` index the stacked arrays; ``frame`` maps rows to the file's frame ids.
    """

    path: str
    numbers: torch.Tensor            # (n,)
    frame: np.ndarray                # (F,) frame ids
    positions_bohr: torch.Tensor     # (F, n, 3)
    fock: torch.Tensor               # (F, nao, nao)
    overlap: torch.Tensor            # (F, nao, nao)
    mo_energy: torch.Tensor          # (F, nao) eigenvalues of the reference (fock, overlap)
    metadata: dict
    sha256: str = ""
    extra: dict = field(default_factory=dict)   # e_tot, gradient, hcore when loaded
    charge: int = 0

    @property
    def n_frames(self) -> int:
        return int(self.fock.shape[0])

    @property
    def nao(self) -> int:
        return int(self.fock.shape[-1])

    @property
    def basis(self) -> str:
        return str(self.metadata.get("basis", ""))

    @property
    def n_occ(self) -> int:
        from ..validation import n_occupied

        try:
            return n_occupied(self.numbers.tolist(), self.charge)
        except ValueError as exc:
            raise ValueError(f"{self.path}: {exc}; training supports closed shells only") from None

    @property
    def ao_atom(self) -> torch.Tensor:
        if "_ao_atom" not in self.extra:
            from ..basis import BasisLayout
            z = [int(v) for v in self.numbers]
            self.extra["_ao_atom"] = BasisLayout(self.basis, sorted(set(z))).ao_atom(z)
        return self.extra["_ao_atom"]

    def rows_of_frames(self, frame_ids: Sequence[int]) -> np.ndarray:
        """Row indices of the given frame ids (error naming the first missing id)."""
        lookup = {int(f): i for i, f in enumerate(self.frame)}
        rows = []
        for f in frame_ids:
            if int(f) not in lookup:
                raise KeyError(f"frame {int(f)} is not in {self.path}")
            rows.append(lookup[int(f)])
        return np.asarray(rows, dtype=np.int64)

    def batch(self, rows, dtype: torch.dtype = torch.float64, table: int = 0) -> Batch:
        """The structures at ``rows`` as a Batch in ``dtype``."""
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        b, n = len(rows), len(self.numbers)
        # e_tot stays float64: ~100 Hartree in float32 would lose the micro-Hartree digits
        extra = {k: self.extra[k][rows].to(torch.float64 if k in ("e_tot",) + BASE_ENERGY_KEYS else dtype)
                 for k in ENERGY_KEYS + BASE_ENERGY_KEYS if k in self.extra}
        return Batch(
            numbers=self.numbers.repeat(b),
            positions_bohr=self.positions_bohr[rows].reshape(b * n, 3).to(dtype),
            batch=torch.arange(b).repeat_interleave(n),
            fock=self.fock[rows].to(dtype),
            overlap=self.overlap[rows].to(dtype),
            mo_energy=self.mo_energy[rows].to(dtype),
            frame=torch.as_tensor(self.frame[rows.numpy()]),
            n_occ=self.n_occ, ao_atom=self.ao_atom, table=table, basis=self.basis, charge=self.charge,
            **extra,
        )


def load_table(path, keys: Sequence[str] = BASE_KEYS, sha256: bool = True, labels: str = "reference") -> FrameTable:
    """Read a dataset file (``dataset.read_dataset``) into a FrameTable.

    ``.db`` files are the project's dataset format. A ``.npz`` with the arrays of ``read_dataset`` (plus
    a ``metadata`` JSON string) is accepted too, for quick experiments. ``labels="high"``: only the frames
    with a high-level label; ``e_tot``/``gradient`` are then the high-level ones and the dataset's own
    gradient becomes ``low_gradient``; ``labels="delta"``: the same frames, ``e_tot``/``gradient`` the high
    minus the dataset's own.
    """
    from ..dataset import dataset_charge
    from ..electronic import solve_fock

    path = Path(path)
    keys = [k for k in dict.fromkeys([*BASE_KEYS, *keys]) if k != "low_gradient"]
    if path.suffix == ".npz":
        if labels != "reference":
            raise ValueError(f"{path}: labels = {labels!r} needs a .db dataset")
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(str(arrays.pop("metadata", "{}")))
    else:
        from .. import dataset
        from ..labels import read_labeled

        arrays = read_labeled(path, keys, labels)
        if labels != "reference":
            keys = [*keys, "low_gradient"]
        meta = dataset.metadata(path)
        if labels == "high":
            meta = {**meta, "energy_level": meta.get("high_level", {})}
        elif labels == "delta":
            meta = {**meta, "energy_level": {**meta.get("high_level", {}), "delta_from": meta.get("xc") or meta.get("method")}}
    missing = [k for k in ("numbers", "positions_bohr", "frame", *keys) if k not in arrays]
    if missing:
        raise KeyError(f"{path}: no {missing} arrays")
    fock = torch.as_tensor(arrays["fock"], dtype=torch.float64)
    overlap = torch.as_tensor(arrays["overlap"], dtype=torch.float64)
    mo_energy = torch.cat([solve_fock(fock[i:i + 256], overlap[i:i + 256])[0]
                           for i in range(0, len(fock), 256)])
    extra = {k: torch.as_tensor(arrays[k], dtype=torch.float64) for k in ENERGY_KEYS if k in keys}
    return FrameTable(
        path=str(path), numbers=torch.as_tensor(arrays["numbers"], dtype=torch.long),
        frame=np.asarray(arrays["frame"], dtype=np.int64),
        positions_bohr=torch.as_tensor(arrays["positions_bohr"], dtype=torch.float64),
        fock=fock, overlap=overlap, mo_energy=mo_energy, metadata=dict(meta),
        sha256=file_sha256(path) if sha256 else "", extra=extra, charge=dataset_charge(meta),
    )


def split_frames(frame_ids: Sequence[int], train: int, val: int, test: int,
                 seed: int) -> dict[str, list[int]]:
    """Disjoint random train/val/test frame ids (sorted within each split) from ``seed``.

    The permutation is of the sorted frame ids, so the split depends only on the set of ids and the
    seed, not on the row order of the file.
    """
    ids = np.sort(np.asarray(frame_ids, dtype=np.int64))
    need = train + val + test
    if need > len(ids):
        raise ValueError(f"split needs {need} frames (train {train} + val {val} + test {test}), "
                         f"the dataset has {len(ids)}")
    perm = np.random.default_rng(seed).permutation(len(ids))
    # test first, then val, then train: growing the train count later keeps val and test unchanged
    test_ids = ids[perm[:test]]
    val_ids = ids[perm[test:test + val]]
    train_ids = ids[perm[test + val:test + val + train]]
    return {"train": sorted(map(int, train_ids)), "val": sorted(map(int, val_ids)),
            "test": sorted(map(int, test_ids))}


def epoch_plan(row_sets: Sequence[np.ndarray], batch_size: int,
               generator: torch.Generator | None) -> list[tuple[int, np.ndarray]]:
    """Batches of one epoch as (table index, rows). Shuffled by ``generator``; in order if None."""
    plan = []
    for t, rows in enumerate(row_sets):
        rows = np.asarray(rows, dtype=np.int64)
        if generator is not None:
            rows = rows[torch.randperm(len(rows), generator=generator).numpy()]
        plan += [(t, rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    if generator is not None and len(plan) > 1:
        order = torch.randperm(len(plan), generator=generator).tolist()
        plan = [plan[i] for i in order]
    return plan


def iterate_batches(tables: Sequence[FrameTable], row_sets: Sequence[np.ndarray], batch_size: int,
                    dtype: torch.dtype = torch.float64) -> Iterator[Batch]:
    """All rows of all tables in order, ``batch_size`` structures at a time (evaluation)."""
    for t, rows in epoch_plan(row_sets, batch_size, None):
        yield tables[t].batch(rows, dtype=dtype, table=t)


def read_frame_ids(path) -> list[int]:
    """Frame ids from a file: JSON (a list, or a dict with "test"/"frames") or whitespace-separated ints."""
    text = Path(path).read_text().strip()
    if text.startswith(("[", "{")):
        data = json.loads(text)
        if isinstance(data, dict):
            for key in ("test", "frames", "ids"):
                if key in data:
                    data = data[key]
                    break
            else:
                raise ValueError(f"{path}: a JSON object needs a 'test', 'frames' or 'ids' list")
        return [int(v) for v in data]
    return [int(v) for v in text.replace(",", " ").split()]
