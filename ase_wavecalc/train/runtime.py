"""Run-time state of a training process: private RNG states, thread count and deterministic flag for
the run (``_isolated_global_state``), single-threaded blocks (``_one_thread``), SIGINT/SIGTERM handling
(``_StopSignals``) and the exclusive lock on the run directory (``_run_dir_lock``).
"""
from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch

from .config import TrainingError


@contextlib.contextmanager
def _isolated_global_state(threads: int, deterministic: bool):
    """Run with private RNG states, thread count and deterministic-algorithms flag; the caller's are
    restored afterwards."""
    np_state, py_state, n_threads = np.random.get_state(), random.getstate(), torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        try:
            if threads > 0:
                torch.set_num_threads(threads)
            if deterministic:
                torch.use_deterministic_algorithms(True)
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=det_warn)
            torch.set_num_threads(n_threads)
            np.random.set_state(np_state)
            random.setstate(py_state)


@contextlib.contextmanager
def _one_thread():
    """Single-threaded torch for a block: multi-threaded LAPACK (lstsq, pinv) on CPU is not bitwise
    reproducible, and the initialization must be for runs to be repeatable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _StopSignals:
    """SIGINT/SIGTERM set ``self.signum`` (the loop then stops cleanly); a second SIGINT interrupts."""

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._previous.items():
            signal.signal(s, h)
        return False


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path):
    """Exclusive lock on the run directory (released when the process dies)."""
    import fcntl

    f = open(run_dir / ".lock", "w")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainingError(f"{run_dir} is in use by another training process") from None
        f.write(str(os.getpid()))
        f.flush()
        yield
    finally:
        f.close()
