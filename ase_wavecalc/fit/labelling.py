"""Labelling for a fit: PySCF references of queued candidate frames, in queue order, until a deadline.

The queue (``fit.json`` key ``label_queue``: a list of [dataset file name, [frame ids in order]]) says what to
label; every dataset file holds its candidates (``dataset.write_candidates``), so a frame is known by its id.
Labellers run as their own processes (``python -m ase_wavecalc.fit.labelling WORKDIR --shard K --shards N``),
each taking every N-th queue entry, one thread each, so that they label beside a training process; or, with a
Dask cluster, as tasks submitted from the fit's process. Each finished frame is one SQLite transaction
(``generate._store``), so a labeller killed at any moment loses at most the frame it was computing, and a
labeller whose fit process died stops (it checks its parent).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["create_dataset", "pending", "start_labellers", "stop_labellers", "label_with_executor", "main"]


def create_dataset(path, numbers, positions_angstrom, settings: dict, source: str, charge: int = 0) -> None:
    """A dataset file holding the candidates (frame ids 0..F-1) and the reference settings, if not yet there."""
    from ..dataset import check_metadata, connect, read_candidates, write_candidates
    from ..units import angstrom_to_bohr

    db = connect(path, create=True)
    check_metadata(db.metadata, settings, repr(str(path)))
    if read_candidates(db) is None:
        write_candidates(db, numbers, angstrom_to_bohr(np.asarray(positions_angstrom)),
                         info={**settings, "sampler": {"mode": "file", "source": source, "charge": int(charge)}})


def pending(workdir, queue) -> list[tuple[str, int]]:
    """(dataset name, frame) of the queue not yet in their files (converged or not), in queue order."""
    from ..dataset import connect, frame_ids

    out = []
    for name, frames in queue:
        done = frame_ids(connect(Path(workdir) / name))
        out += [(name, int(f)) for f in frames if int(f) not in done]
    return out


def _options(request: dict, recipe: dict) -> dict:
    lab = recipe["labels"]
    return {"method": request["method"], "basis": request["basis"], "conv_tol": float(lab["conv_tol"]),
            "grid_level": int(lab["grid_level"]), "charge": int(request["charge"]),
            "max_cycle": int(lab["max_cycle"]), "gradient": True}


def _store_outcome(db, numbers, candidates, outcome, summary) -> None:
    """Store one finished frame; a frame some other labeller stored meanwhile is left as it is."""
    from ..dataset import DatasetError
    from ..generate import _store

    try:
        _store(db, outcome, numbers, candidates, set(), [], summary)
    except DatasetError:     # "frame N is already in ...": labelled twice (a lost Dask task that came back)
        pass


class _Guess:
    """The SCF start from the fit's newest Fock network (``fit.json`` key ``guess_run``, a run directory):
    the closed-shell density of its predicted F. Reloaded when the fit names a newer run."""

    def __init__(self, workdir: Path):
        self.workdir, self.run, self.model = workdir, None, None

    def density(self, numbers, positions_bohr, basis: str, charge: int):
        import torch

        run = json.loads((self.workdir / "fit.json").read_text()).get("guess_run")
        if not run:
            return None
        if run != self.run:
            from ..model.io import load_model
            from ..train.cli_export import load_run_model
            run_dir = self.workdir / "runs" / run
            try:
                model = load_run_model(run_dir)[0] if (run_dir / "checkpoint.pt").is_file() else \
                    load_model(str(run_dir))[0]      # a packed run (weights only)
            except (OSError, RuntimeError, KeyError, ValueError):
                return None        # a checkpoint being written: the default guess this time
            self.run, self.model = run, model.double()
        from ..electronic import closed_shell_density
        from ..integrals import make_mol
        from ..validation import n_occupied

        mol = make_mol(numbers, positions_bohr, basis, charge=charge)   # (n_occupied counts ECP cores out)
        with torch.no_grad():
            out = self.model(torch.as_tensor(numbers), torch.as_tensor(positions_bohr, dtype=torch.float64))
            fock = out["fock"][0] if out["fock"].dim() == 3 else out["fock"]
            try:
                dm = closed_shell_density(fock, torch.as_tensor(mol.intor("int1e_ovlp")),
                                          n_occupied(numbers, charge, mol=mol))
            except ValueError:     # a closed predicted gap: no use as a start
                return None
        return dm.numpy()


def _label_one(frame, numbers, positions_bohr, options, guess: _Guess | None):
    """``generate._reference_task`` from the model's guess density when there is one, and once more from
    PySCF's guess if that SCF does not converge. Any other error of this geometry's reference (a singular
    overlap, a linear-algebra failure) is the frame's outcome too, stored as failed: raised, it would stop the
    labeller, and every restart would meet the same frame first."""
    from ..generate import _reference_task

    dm0 = None
    if guess is not None:
        try:
            dm0 = guess.density(numbers, positions_bohr, options["basis"], int(options["charge"]))
        except Exception:  # noqa: BLE001  (the guess is an optimization: PySCF's own guess instead)
            dm0 = None
    try:
        outcome = _reference_task(frame, numbers, positions_bohr, options, dm0=dm0)
        if outcome[1] == "not_converged" and dm0 is not None:
            outcome = _reference_task(frame, numbers, positions_bohr, options)
    except Exception as exc:  # noqa: BLE001  (see above; KeyboardInterrupt and SystemExit still stop the labeller)
        outcome = (frame, "not_converged", f"reference failed: {type(exc).__name__}: {exc}", 0)
    return outcome


def _label_shard(workdir: Path, shard: int, shards: int, deadline: float) -> int:
    from ..dataset import connect, read_candidates

    parent = os.getppid()
    state = json.loads((workdir / "fit.json").read_text())
    options = _options(state["request"], state["recipe"])
    # shards by position in the whole queue (not in the pending list, which shrinks as siblings store
    # frames): two labellers never take the same frame
    everything = [(name, int(f)) for name, frames in state["label_queue"] for f in frames]
    waiting = set(pending(workdir, state["label_queue"]))
    todo = [item for i, item in enumerate(everything) if i % shards == shard and item in waiting]
    dbs, cands = {}, {}
    guess = _Guess(workdir) if state["recipe"]["labels"].get("model_guess", True) else None
    summary = {"computed": 0, "not_converged": []}
    for name, frame in todo:
        if time.time() >= deadline or os.getppid() != parent:
            break
        if name not in dbs:
            dbs[name] = connect(workdir / name)
            cands[name] = read_candidates(dbs[name])
        numbers, candidates = cands[name]
        outcome = _label_one(frame, numbers, candidates[frame], options, guess)
        _store_outcome(dbs[name], numbers, candidates, outcome, summary)
    return 0


def start_labellers(workdir, n: int, deadline: float) -> list[subprocess.Popen]:
    """``n`` labeller processes (one thread each) over the queue of ``workdir`` until ``deadline`` (time.time())."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = []
    for k in range(n):
        cmd = [sys.executable, "-m", "ase_wavecalc.fit.labelling", str(workdir), "--shard", str(k),
               "--shards", str(n), "--deadline", repr(float(deadline))]
        log = open(Path(workdir) / f"labeller_{k}.log", "a")
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=False))
    return procs


def stop_labellers(procs, wait_s: float = 0.0) -> None:
    """Let labellers finish for up to ``wait_s`` seconds, then stop them (a frame in progress is lost, none other)."""
    t_end = time.monotonic() + wait_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, t_end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def label_with_executor(workdir, queue, request: dict, recipe: dict, executor, deadline: float,
                        in_flight: int = 64) -> None:
    """Label the queue on a ``concurrent.futures`` executor (a Dask cluster) until ``deadline``; frames
    come back in any order and are stored as they come. A task lost with its worker is simply pending next time."""
    import concurrent.futures as cf

    from ..dataset import connect, read_candidates

    workdir = Path(workdir)
    options = _options(request, recipe)
    todo = pending(workdir, queue)
    dbs = {name: connect(workdir / name) for name, _ in queue}
    cands = {name: read_candidates(db) for name, db in dbs.items()}
    summary = {"computed": 0, "not_converged": []}
    futures = {}
    it = iter(todo)
    while True:
        while len(futures) < in_flight and time.time() < deadline:
            item = next(it, None)
            if item is None:
                break
            name, frame = item
            numbers, candidates = cands[name]
            futures[executor.submit(_label_one, frame, numbers, candidates[frame], options, None)] = name
        if not futures:
            return
        finished, _ = cf.wait(futures, timeout=max(1.0, deadline - time.time()), return_when=cf.FIRST_COMPLETED)
        for fut in finished:
            name = futures.pop(fut)
            try:
                outcome = fut.result()
            except Exception:  # noqa: BLE001  (a lost worker: the frame stays pending)
                continue
            _store_outcome(dbs[name], *cands[name], outcome, summary)
        if time.time() >= deadline and not finished:
            for fut in futures:
                fut.cancel()
            return


def _die_with_parent() -> None:
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="one labeller of a `wavecalc fit` work directory")
    parser.add_argument("workdir")
    parser.add_argument("--shard", type=int, default=0)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--deadline", type=float, required=True, help="time.time() at which to stop")
    args = parser.parse_args(argv)
    _die_with_parent()
    return _label_shard(Path(args.workdir), args.shard, args.shards, args.deadline)


if __name__ == "__main__":
    sys.exit(main())
