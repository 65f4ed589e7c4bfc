"""``wavecalc generate``: sampled geometries -> parallel PySCF references -> a dataset file.

1. Candidates: Langevin MD (``sampling.sample_geometries``) gives ``n_frames`` geometries, or, with
   ``geometries=True``, every selected frame of a structure file is one (labelling given geometries,
   e.g. the frames where a model's MD left its training data: active learning). They are stored in
   the dataset file together with all settings in one transaction before any reference runs.
2. References: every candidate without a row is sent to a ``concurrent.futures`` executor (local
   processes by default, or a Dask cluster); ``reference.run_reference`` runs in the workers.
3. Storage: the main process alone writes each finished frame as one row in its own transaction.

Killed at any moment (even ``kill -9``), the same command resumes: the candidates come back from the
file and only frames without a row are computed. SCF failures are stored as ``converged=False`` rows
(reported, skipped by ``read_dataset``, retried with ``--retry-failed``); other worker errors leave the
frame to do and make the exit status 1. Mistakes in the input (a missing structure file, settings out of
range, a reference setting that differs from the file's) are found before the file is created or changed,
and end with one line on stderr and exit status 2.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing
import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from .dataset import (DatasetError, check_metadata, connect, frame_ids, read_candidates, write_candidates,
                      write_frame)
from .reference import ReferenceNotConverged, reference_settings, run_reference
from .units import bohr_to_angstrom

__all__ = ["generate", "add_cli_arguments", "cli_main"]

# sampler settings that must agree between a run and the candidates already in the file
SAMPLER_KEYS = ("source", "temperature_K", "n_frames", "interval_steps", "timestep_fs", "friction_per_fs",
                "equilibration_steps", "seed", "charge")


# ----------------------------------------------------------------------------------------------------
# worker side (module level: picklable for process pools and Dask)


def _init_worker(threads: int) -> None:
    """Process-pool initializer: pin OpenMP/BLAS threads so that N workers share the cores."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    from pyscf import lib

    lib.num_threads(threads)


def _reference_task(frame: int, numbers, positions_bohr, options: dict, dm0=None):
    """Run one reference (from the density matrix ``dm0``, (nao, nao), when given, else PySCF's guess);
    returns (frame, "ok", result) or (frame, "not_converged", message, cycles)."""
    try:
        result = run_reference(numbers, bohr_to_angstrom(np.asarray(positions_bohr)), dm0=dm0, **options)
    except ReferenceNotConverged as exc:
        return frame, "not_converged", str(exc), exc.cycles
    return frame, "ok", result


# ----------------------------------------------------------------------------------------------------
# main side


def _sampler_request(structure, n_frames, temperature, interval, timestep, friction, equilibration, seed,
                     charge) -> dict:
    return {"source": str(structure), "temperature_K": float(temperature), "n_frames": int(n_frames),
            "interval_steps": int(interval), "timestep_fs": float(timestep),
            "friction_per_fs": float(friction), "equilibration_steps": int(equilibration), "seed": int(seed),
            "charge": int(charge)}


def _file_request(structure, charge):
    """(sampler settings, numbers, positions in Angstrom) for ``geometries=True``: the file's frames and a
    fingerprint of their positions."""
    import hashlib

    from .sampling import load_frames

    frames = load_frames(structure)
    positions = np.stack([a.positions for a in frames])
    request = {"source": str(structure), "mode": "file", "n_frames": len(frames), "charge": int(charge),
               "positions_sha256": hashlib.sha256(np.ascontiguousarray(positions).tobytes()).hexdigest()}
    return request, frames[0].numbers, positions


def _refuse_foreign_frames(db) -> None:
    """A file with frames but no candidates was not made by `wavecalc generate` (an imported dataset)."""
    if frame_ids(db):
        raise DatasetError(f"{db.filename!r} already holds frames that `wavecalc generate` did not sample "
                           "(an imported dataset?); generate into a new file")


def _ensure_file_candidates(db, structure, file_request, settings: dict):
    """Candidates of the file, taken from the structure file's frames (``_file_request``) and stored first
    if it has none."""
    from .units import angstrom_to_bohr

    request, numbers, positions = file_request
    stored = read_candidates(db)
    if stored is not None:
        sampler = db.metadata.get("sampler", {})
        if {k: sampler.get(k) for k in request} != request:
            raise DatasetError(f"{db.filename!r} holds other candidates (from {sampler.get('source')!r}, "
                               f"{len(stored[1])} frames) than the {len(positions)} frames of {str(structure)!r}; "
                               "use another --out")
        return stored
    _refuse_foreign_frames(db)
    write_candidates(db, numbers, angstrom_to_bohr(positions), info={**settings, "sampler": request})
    return read_candidates(db)


def _ensure_candidates(db, atoms, request: dict, settings: dict, driver: str, progress: bool):
    """Candidates of the file, sampling them from ``atoms`` (the loaded structure) and storing them first
    if the file has none."""
    stored = read_candidates(db)
    if stored is not None and db.metadata.get("sampler", {}).get("mode") == "file":
        raise DatasetError(f"{db.filename!r} holds candidates taken from a structure file "
                           "(--geometries); use another --out for MD sampling")
    if stored is not None:
        sampler = db.metadata.get("sampler", {})
        diff = {k: (sampler.get(k), request[k]) for k in SAMPLER_KEYS if sampler.get(k) != request[k]}
        if not diff:
            return stored
        if set(diff) == {"n_frames"} and request["n_frames"] < len(stored[1]):
            raise DatasetError(f"{db.filename!r} holds {len(stored[1])} candidates; --n-frames can grow a "
                               f"dataset (continuing the same MD) but not shrink it")
        if set(diff) != {"n_frames"}:
            raise DatasetError(f"{db.filename!r} holds candidates sampled with other settings "
                               f"(stored vs requested: {diff}); use another --out or the same options")
        # a larger --n-frames continues the same trajectory: resample, check, append the new frames
    else:
        _refuse_foreign_frames(db)
    from .sampling import sample_geometries
    from .units import angstrom_to_bohr

    t0 = time.perf_counter()
    positions, info = sample_geometries(
        atoms, request["n_frames"], temperature=request["temperature_K"], interval=request["interval_steps"],
        timestep=request["timestep_fs"], friction=request["friction_per_fs"], seed=request["seed"],
        equilibration=request["equilibration_steps"], driver=driver, charge=request["charge"],
        progress=progress)
    info.update(request, seconds=round(time.perf_counter() - t0, 3))
    numbers = atoms.numbers
    write_candidates(db, numbers, angstrom_to_bohr(positions), info={**settings, "sampler": info})
    return read_candidates(db)


def _make_executor(workers, dask_scheduler, n_tasks, threads=None):
    """(executor, description, cleanup callable). ``threads`` per local worker (default: cores / workers)."""
    if dask_scheduler:
        try:
            from distributed import Client
        except ImportError as exc:
            raise ImportError("--dask-scheduler needs dask.distributed "
                              "(pip install 'ase-wavecalc[dask]')") from exc
        client = Client(dask_scheduler)
        executor = client.get_executor(pure=False)
        return executor, f"Dask cluster at {dask_scheduler}", client.close
    cores = os.cpu_count() or 1
    workers = int(workers) if workers else max(1, min(cores, n_tasks))
    threads = int(threads) if threads else max(1, cores // workers)
    # spawn: a fresh interpreter per worker; forking after OpenMP ran in this process can deadlock
    executor = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=_init_worker, initargs=(threads,))
    return executor, f"{workers} local processes x {threads} threads", lambda: None


def generate(structure, out, method: str = "pbe", basis: str = "def2-svp", n_frames: int = 100,
             temperature: float = 300.0, interval: int = 25, seed: int = 0, workers: int | None = None,
             dask_scheduler: str | None = None, conv_tol: float = 1e-11, grid_level: int = 3,
             max_cycle: int = 100, driver: str = "auto", timestep: float = 0.5, friction: float = 0.02,
             equilibration: int = 200, charge: int = 0, retry_failed: bool = False, progress: bool = True,
             executor: cf.Executor | None = None, geometries: bool = False, threads: int | None = None,
             log=print) -> dict:
    """Make (or complete) the dataset ``out`` for ``structure``; returns a summary dict.

    ``structure``: a molecule name (``ase.build.molecule``) or a structure file (see
    ``sampling.load_structure``); with ``geometries=True`` a structure file whose every frame (or the
    ``path@SLICE`` selection, ASE index syntax) is a candidate, without MD: all frames must have the
    same atoms in the same order. ``executor``: any ``concurrent.futures.Executor`` to use instead of
    the one chosen by ``workers``/``dask_scheduler`` (it is not shut down here).
    Summary keys: out, n_candidates, already_done, computed, not_converged (frames, this run),
    not_converged_in_file (all), errors ({frame: message}), seconds, reference_seconds (per frame, mean).
    """
    t_start = time.perf_counter()
    settings = reference_settings(method, basis, conv_tol, grid_level)
    settings["max_cycle"] = int(max_cycle)
    # what a user can get wrong is checked before the file is created or changed
    out = Path(out)
    if out.is_file():
        check_metadata(connect(out).metadata, settings, repr(str(out)))
    if geometries:
        file_request = _file_request(structure, charge)
    else:
        from .sampling import check_sampling_settings, load_structure

        check_sampling_settings(n_frames, temperature, interval, timestep, friction, equilibration)
        atoms = load_structure(structure)
        request = _sampler_request(structure, n_frames, temperature, interval, timestep, friction,
                                   equilibration, seed, charge)
    created = not out.exists()
    db = connect(out, create=True)
    try:
        if geometries:
            numbers, candidates = _ensure_file_candidates(db, structure, file_request, settings)
        else:
            numbers, candidates = _ensure_candidates(db, atoms, request, settings, driver, progress)
    except BaseException:   # e.g. the sampling MD failed or was interrupted: leave no empty file behind
        if created and _holds_nothing(db):
            _remove_dataset_file(out)
        raise

    done = frame_ids(db)
    failed_before = frame_ids(db, converged=False)
    todo = [i for i in range(len(candidates)) if i not in done or (retry_failed and i in failed_before)]
    summary = {"out": str(out), "n_candidates": len(candidates), "already_done": len(done) - (
        len(failed_before) if retry_failed else 0), "computed": 0, "not_converged": [], "errors": {},
        "seconds": 0.0, "reference_seconds": float("nan")}
    if not todo:
        summary["not_converged_in_file"] = sorted(frame_ids(db, converged=False))
        summary["seconds"] = time.perf_counter() - t_start
        return summary

    options = {"method": method, "basis": basis, "conv_tol": conv_tol, "grid_level": grid_level,
               "charge": charge, "max_cycle": max_cycle, "gradient": True}
    own = executor is None
    cleanup = lambda: None  # noqa: E731
    if own:
        executor, description, cleanup = _make_executor(workers, dask_scheduler, len(todo), threads)
    else:
        description = type(executor).__name__
    log(f"{out}: {len(candidates)} candidates, {len(done)} in file, computing {len(todo)} "
        f"({settings['method'].upper()} {settings['xc']}/{basis}) on {description}")

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="references", unit="frame", dynamic_ncols=True, smoothing=0.1)
    ref_seconds = []
    futures = {}
    try:
        for i in todo:
            fut = executor.submit(_reference_task, i, numbers, candidates[i], options)
            futures[fut] = i
        for fut in cf.as_completed(futures):
            i = futures.pop(fut)
            try:
                outcome = fut.result()
            except Exception as exc:  # a worker error that is not an SCF failure: leave the frame to do
                summary["errors"][i] = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, BrokenProcessPool):
                    raise
            else:
                _store(db, outcome, numbers, candidates, failed_before, ref_seconds, summary)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(not_converged=len(summary["not_converged"]), errors=len(summary["errors"]),
                                refresh=False)
    finally:
        if bar is not None:
            bar.close()
        if own:
            for fut in futures:
                fut.cancel()
            executor.shutdown(wait=True)  # pending futures were cancelled above
            cleanup()
    summary["reference_seconds"] = float(np.mean(ref_seconds)) if ref_seconds else float("nan")
    summary["not_converged"].sort()
    summary["not_converged_in_file"] = sorted(frame_ids(db, converged=False))
    summary["seconds"] = time.perf_counter() - t_start
    return summary


def _holds_nothing(db) -> bool:
    try:
        return read_candidates(db) is None and not frame_ids(db)
    except Exception:  # noqa: BLE001  (an unreadable new file holds nothing worth keeping)
        return True


def _remove_dataset_file(path: Path) -> None:
    """Delete a dataset file this run created, with SQLite's side files."""
    for p in (path, *(path.with_name(path.name + s) for s in ("-journal", "-wal", "-shm"))):
        p.unlink(missing_ok=True)


def _store(db, outcome, numbers, candidates, failed_before, ref_seconds, summary):
    """Write one finished frame (one transaction; replaces an earlier failed row on --retry-failed)."""
    frame, status = outcome[0], outcome[1]
    old_ids = []
    if frame in failed_before:
        old_ids = [row.id for row in db.select(frame=frame, include_data=False)]
    with db:
        if old_ids:
            db.delete(old_ids)
        if status == "ok":
            result = outcome[2]
            info = result["info"]
            write_frame(db, frame, numbers, candidates[frame], result, converged=True,
                        scf_cycles=int(info["scf_cycles"]), seconds=round(float(info["seconds"]), 3),
                        guess=str(info.get("guess", "minao")))
        else:
            message, cycles = outcome[2], outcome[3]
            write_frame(db, frame, numbers, candidates[frame], converged=False, error=message,
                        scf_cycles=int(cycles))
    if status == "ok":
        summary["computed"] += 1
        ref_seconds.append(float(outcome[2]["info"]["seconds"]))
    else:
        summary["not_converged"].append(frame)


# ----------------------------------------------------------------------------------------------------
# command line


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("structure", metavar="MOLECULE|FILE",
                        help="molecule name for ase.build.molecule (H2O, CH3CH2OH, ...) or a structure file "
                             "(xyz, extxyz, ASE db; path@INDEX picks a frame)")
    parser.add_argument("--out", required=True, help="dataset file (ASE SQLite .db), created or resumed")
    g = parser.add_argument_group("reference")
    g.add_argument("--method", default="pbe",
                   help="'hf' or a PySCF xc functional; 'ccsd(t)' or 'mp2': high-level labels for "
                        "the frames of an existing dataset (with --geometries DATA.db --out DATA.db)")
    g.add_argument("--basis", default="def2-svp", help="PySCF basis name")
    g.add_argument("--conv-tol", type=float, default=1e-11, help="SCF energy tolerance, Hartree")
    g.add_argument("--grid-level", type=int, default=3, help="DFT grid level")
    g.add_argument("--max-cycle", type=int, default=100, help="SCF iterations before a frame counts as failed")
    g.add_argument("--charge", type=int, default=0, help="total charge (closed shell only)")
    g.add_argument("--energies-only", action="store_true",
                   help="correlated methods: energies without forces (CCSD(T) gradients cost ~20x the energy)")
    g.add_argument("--max-frames", type=int, default=None,
                   help="correlated methods: label at most this many frames in this run")
    g.add_argument("--retry-failed", action="store_true", help="recompute frames stored as not converged")
    s = parser.add_argument_group("sampling (Langevin MD; not with --geometries)")
    s.add_argument("--n-frames", type=int, default=100, help="number of candidate geometries")
    s.add_argument("--temperature", type=float, default=300.0, help="K")
    s.add_argument("--interval", type=int, default=25, help="MD steps between frames")
    s.add_argument("--timestep", type=float, default=0.5, help="fs")
    s.add_argument("--friction", type=float, default=0.02, help="Langevin friction, 1/fs")
    s.add_argument("--equilibration", type=int, default=200, help="MD steps before the first frame")
    s.add_argument("--seed", type=int, default=0, help="random seed of the MD")
    s.add_argument("--driver", choices=("auto", "xtb", "pyscf"), default="auto",
                   help="MD forces: GFN2-xTB via tblite (auto if installed) or PySCF HF/STO-3G")
    s.add_argument("--geometries", action="store_true",
                   help="no MD: every frame of FILE (FILE@SLICE, e.g. md.traj@::10) is a candidate; labels given "
                        "geometries, e.g. where a model's MD stopped (active learning)")
    p = parser.add_argument_group("parallel")
    p.add_argument("--workers", type=int, default=None, help="local worker processes (default: CPU cores)")
    p.add_argument("--threads", type=int, default=None,
                   help="OpenMP threads per local worker (default: CPU cores / workers); 1 leaves cores to "
                        "other jobs, e.g. training beside the generation")
    p.add_argument("--dask-scheduler", metavar="ADDRESS", default=None,
                   help="run references on a Dask cluster (e.g. tcp://host:8786) instead of local processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _label_main(args) -> int:
    """``--method ccsd(t)|mp2``: high-level labels for the frames of an existing dataset (labels.py)."""
    from .labels import label_frames

    if not args.geometries or Path(args.structure).resolve() != Path(args.out).resolve():
        print("wavecalc generate: error: a correlated method labels the frames of an existing dataset: "
              "wavecalc generate DATA.db --geometries --method ccsd(t) --basis cc-pvtz --out DATA.db "
              "(the labels go into the rows that hold the low-level Hamiltonian)", file=sys.stderr)
        return 2
    executor, cleanup = None, (lambda: None)
    if (args.workers or 1) > 1 or args.dask_scheduler:
        executor, _, cleanup = _make_executor(args.workers, args.dask_scheduler, 1 << 30, args.threads)
    try:
        s = label_frames(args.out, args.method, args.basis, gradient=not args.energies_only,
                         max_frames=args.max_frames, retry_failed=args.retry_failed, max_cycle=args.max_cycle,
                         executor=executor, progress=not args.quiet)
    except KeyboardInterrupt:
        print("\nwavecalc generate: interrupted; finished labels are saved, re-run the same command to resume",
              file=sys.stderr)
        return 130
    except (DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"wavecalc generate: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if executor is not None:
            executor.shutdown(wait=True)
            cleanup()
    print(f"{args.out}: labeled {s['computed']} frames in {s['seconds']:.1f} s"
          + (f"; {len(s['failed'])} did not converge (stored as failed): {s['failed'][:20]}" if s["failed"] else ""))
    return 0


def cli_main(args) -> int:
    from .correlated import correlated_method

    if correlated_method(args.method) is not None:
        return _label_main(args)
    if args.energies_only or args.max_frames is not None:
        print("wavecalc generate: error: --energies-only and --max-frames go with a correlated --method "
              "(ccsd(t), mp2)", file=sys.stderr)
        return 2
    try:
        s = generate(args.structure, args.out, method=args.method, basis=args.basis, n_frames=args.n_frames,
                     temperature=args.temperature, interval=args.interval, seed=args.seed,
                     workers=args.workers, dask_scheduler=args.dask_scheduler, conv_tol=args.conv_tol,
                     grid_level=args.grid_level, max_cycle=args.max_cycle, driver=args.driver,
                     timestep=args.timestep, friction=args.friction, equilibration=args.equilibration,
                     charge=args.charge, retry_failed=args.retry_failed, progress=not args.quiet,
                     geometries=args.geometries, threads=args.threads)
    except KeyboardInterrupt:
        print("\nwavecalc generate: interrupted; finished frames are saved, re-run the same command to resume",
              file=sys.stderr)
        return 130
    except BrokenProcessPool as exc:
        print(f"wavecalc generate: a worker process died ({exc}; out of memory?); finished frames are saved, "
              "re-run the same command (perhaps with fewer --workers) to resume", file=sys.stderr)
        return 1
    except (DatasetError, ValueError, FileNotFoundError, ImportError) as exc:
        print(f"wavecalc generate: error: {exc}", file=sys.stderr)
        return 2
    n_bad = len(s["not_converged_in_file"])
    print(f"{s['out']}: {s['n_candidates'] - n_bad - len(s['errors'])} good frames of {s['n_candidates']}; "
          f"this run computed {s['computed']} in {s['seconds']:.1f} s"
          + (f" ({s['reference_seconds']:.2f} s per reference)" if s["computed"] else ""))
    if n_bad:
        shown = s["not_converged_in_file"][:20]
        print(f"  {n_bad} frames did not converge (stored with converged=False, excluded from training): "
              f"{shown}{' ...' if n_bad > 20 else ''}; try --retry-failed with a larger --max-cycle")
    if s["errors"]:
        for frame, msg in sorted(s["errors"].items())[:10]:
            print(f"  frame {frame} failed: {msg}", file=sys.stderr)
        print(f"  {len(s['errors'])} frames failed with errors and are not stored; re-run to retry",
              file=sys.stderr)
        return 1
    return 0
