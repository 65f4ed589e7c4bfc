"""The state of a fit on disk: what is done, what it was asked for, and the fit's own clock.

``fit.json`` in the work directory is rewritten atomically after every change, so a fit killed at any
moment (SIGKILL included) resumes from it. The clock counts the wall time of every invocation: a heartbeat
thread adds the time since the last save every few seconds, so at most that much is lost to a SIGKILL.
An exclusive lock (``.lock``, released by the kernel when the process dies) keeps two fits out of one directory.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

__all__ = ["FitState", "FitLockedError"]

FORMAT = 1


class FitLockedError(RuntimeError):
    """Another ``wavecalc fit`` is running in this work directory."""


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FitState:
    """``fit.json`` of a work directory: a dict ``data`` plus the clock ``elapsed()`` (seconds).

    Keys of ``data``: format, request (what the user asked for: molecule, method, basis, charge, budget_s,
    recipe text), phases ({phase: "done"}), and whatever the phases record (frames, runs, metrics).
    """

    def __init__(self, workdir: str | Path, heartbeat_s: float = 5.0):
        self.workdir = Path(workdir)
        self.path = self.workdir / "fit.json"
        self.heartbeat_s = float(heartbeat_s)
        self.data: dict = {}
        self._lock_file = None
        self._mutex = threading.RLock()
        self._t_mark = None
        self._stop = threading.Event()
        self._thread = None

    # -- lifetime --------------------------------------------------------------------------------------
    def open(self) -> "FitState":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.workdir / ".lock", "w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise FitLockedError(f"another `wavecalc fit` is running in {self.workdir}") from None
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            if self.data.get("format") != FORMAT:
                raise RuntimeError(f"{self.path} is of format {self.data.get('format')}, this version reads {FORMAT}")
        else:
            self.data = {"format": FORMAT, "elapsed_s": 0.0, "phases": {}, "invocations": 0}
        self.data["invocations"] = int(self.data.get("invocations", 0)) + 1
        self._t_mark = time.monotonic()
        self.save()
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="fit-clock", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._t_mark is not None:
            self.save()
            self._t_mark = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.save()

    # -- clock and persistence ---------------------------------------------------------------------------
    def _tick(self) -> None:
        if self._t_mark is not None:
            now = time.monotonic()
            self.data["elapsed_s"] = float(self.data.get("elapsed_s", 0.0)) + (now - self._t_mark)
            self._t_mark = now

    def elapsed(self) -> float:
        """Seconds of wall time this fit has run, over all invocations."""
        with self._mutex:
            self._tick()
            return float(self.data["elapsed_s"])

    def save(self) -> None:
        with self._mutex:
            self._tick()
            _atomic_write(self.path, json.dumps(self.data, indent=1, sort_keys=True))

    # -- phases ------------------------------------------------------------------------------------------
    def done(self, phase: str) -> bool:
        return self.data["phases"].get(phase) == "done"

    def mark_done(self, phase: str, **record) -> None:
        with self._mutex:
            self.data["phases"][phase] = "done"
            if record:
                self.data.setdefault("records", {})[phase] = record
            self.save()

    def set(self, key: str, value) -> None:
        with self._mutex:
            self.data[key] = value
            self.save()

    def get(self, key: str, default=None):
        return self.data.get(key, default)
