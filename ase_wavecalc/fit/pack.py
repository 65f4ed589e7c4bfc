"""A fit's work directory as a compact folder to commit, and back: a fit that outlasts a session goes on in
the next one from a fresh clone.

``pack(workdir, dest)`` writes ``dest/``:

| file | what |
|---|---|
| ``fit.json``, ``candidates.npz``, ``test_pairs.npz`` | the state, the candidates, the test pairs if measured |
| ``data/<file>/part-*.npz`` | every dataset file's converged frames (``export-npz --compact``: F float32 upper triangle) |
| ``data/<file>/dataset.npz`` | its candidates (Bohr, float64), metadata (JSON) and the frames whose SCF failed |
| ``runs/<run>/`` | each training run's best EMA weights as a model directory (weights only: no optimizer state), with its config, split and metrics |

``unpack(dest, workdir)`` rebuilds the dataset files (overlap and core Hamiltonian recomputed with PySCF) and
the runs as model directories marked ``PACKED``; a packed run that the fit has to continue restarts from its
weights with a fresh optimizer (``training.train_for``), so it is not bit for bit the run it would have been.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

__all__ = ["pack", "unpack", "PACKED"]

PACKED = "PACKED"


def _pack_dataset(db_path: Path, dest: Path) -> None:
    from ..dataset import connect, frame_ids, read_candidates
    from ..npz_export import export_npz

    db = connect(db_path)
    dest.mkdir(parents=True, exist_ok=True)
    stored = read_candidates(db)
    if stored is None:         # an imported dataset (--data): its frames are all there is
        np.savez_compressed(dest / "dataset.npz", imported=True)
    else:
        numbers, candidates = stored
        np.savez_compressed(dest / "dataset.npz", numbers=numbers, candidates_bohr=candidates,
                            metadata=json.dumps(db.metadata), failed=np.array(sorted(frame_ids(db, converged=False))))
    if frame_ids(db, converged=True):
        export_npz(db_path, dest / "parts", progress=False, compact=True)


def _pack_run(run_dir: Path, dest: Path) -> None:
    from ..model.io import save_model
    from ..train.cli_export import load_run_model

    if (run_dir / PACKED).exists():           # packed and not trained on since: copy as it is
        shutil.copytree(run_dir, dest)
        return
    model, info = load_run_model(run_dir)
    progress = {k: v for k, v in info["progress"].items() if isinstance(v, (int, float, str, bool))}
    save_model(model, dest, {"name": run_dir.name, "packed_from": info["weights"], "epoch": info["epoch"],
                             "step": info["step"], "progress": progress})
    for name in ("config.toml", "split.json", "metrics.csv"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, dest / name)
    (dest / PACKED).write_text("weights only (best EMA); optimizer state not kept\n")


def pack(workdir, dest) -> Path:
    """Write the compact copy of ``workdir`` to ``dest`` (replaced); returns ``dest``."""
    import fcntl

    from .state import FitLockedError

    workdir, dest = Path(workdir), Path(dest)
    if not (workdir / "fit.json").is_file():
        raise ValueError(f"{workdir} holds no fit to pack")
    lock = open(workdir / ".lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise FitLockedError(f"a `wavecalc fit` is running in {workdir}: stop it (Ctrl-C) before packing") from None
    try:
        return _pack(workdir, dest)
    finally:
        lock.close()


def _pack(workdir: Path, dest: Path) -> Path:
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in ("fit.json", "candidates.npz", "test_pairs.npz"):
        if (workdir / name).is_file():
            shutil.copyfile(workdir / name, tmp / name)
    for db in sorted(workdir.glob("*.db")):
        _pack_dataset(db, tmp / "data" / db.stem)
    for run in sorted((workdir / "runs").iterdir()) if (workdir / "runs").is_dir() else []:
        if (run / "checkpoint.pt").is_file() or (run / PACKED).exists():
            _pack_run(run, tmp / "runs" / run.name)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def _unpack_dataset(src: Path, db_path: Path) -> int:
    from ..dataset import connect, dataset_charge, write_candidates, write_frame
    from ..npz_import import OneElectronIntegrals, _symmetric_from_triu

    with np.load(src / "dataset.npz", allow_pickle=False) as d:
        if "imported" in d.files:
            from ..npz_import import import_npz
            return import_npz(db_path, sorted((src / "parts").glob("part-*.npz")), progress=False)["written"]
        numbers, candidates = d["numbers"], d["candidates_bohr"]
        meta, failed = json.loads(str(d["metadata"])), [int(f) for f in d["failed"]]
    db = connect(db_path, create=True)
    write_candidates(db, numbers, candidates, info=meta)
    integrals = OneElectronIntegrals(numbers, meta["basis"], dataset_charge(meta))
    n = 0
    for part in sorted((src / "parts").glob("part-*.npz")) if (src / "parts").is_dir() else []:
        with np.load(part, allow_pickle=False) as p:
            frames, fock = p["frame"], _symmetric_from_triu(p["fock_triu"])
            e_tot, grad, eps, dip = p["e_tot"], p["gradient"], p["mo_energy"].astype(float), p["dipole_au"]
        with db:
            for k, f in enumerate(frames):
                x = candidates[int(f)]
                write_frame(db, int(f), numbers, x, {
                    "fock": fock[k], **integrals(x), "e_tot": e_tot[k],
                    "gradient": grad[k], "mo_energy": eps[k], "dipole": dip[k]}, converged=True)
                n += 1
    with db:
        for f in failed:
            write_frame(db, f, numbers, candidates[f], converged=False, error="SCF failed (before packing)")
    return n


def unpack(src, workdir, log=print) -> None:
    """Rebuild ``workdir`` (which must not hold a fit) from the packed folder ``src``."""
    src, workdir = Path(src), Path(workdir)
    if workdir.exists() and any(workdir.iterdir()):
        raise ValueError(f"{workdir} is not empty: unpack into a new work directory")
    if not (src / "fit.json").is_file():
        raise ValueError(f"{src} is not a packed fit (no fit.json)")
    tmp = workdir.with_name(workdir.name + ".unpacking")     # built whole, then renamed: a killed unpack redoes it
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for sub in sorted((src / "data").iterdir()) if (src / "data").is_dir() else []:
        n = _unpack_dataset(sub, tmp / f"{sub.name}.db")
        log(f"unpacked {sub.name}.db: {n} frames")
    if (src / "runs").is_dir():
        shutil.copytree(src / "runs", tmp / "runs")
    for name in ("candidates.npz", "test_pairs.npz"):
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)
    state = json.loads((src / "fit.json").read_text())
    # the exported model and the final measurements are not in the pack: the final phase redoes them
    for key in ("exported", "final_results", "npz_exported"):
        state.pop(key, None)
    if state.get("phases", {}).get("final") == "done":
        del state["phases"]["final"]
    (tmp / "fit.json").write_text(json.dumps(state, indent=1, sort_keys=True))
    if workdir.exists():
        workdir.rmdir()
    tmp.rename(workdir)
