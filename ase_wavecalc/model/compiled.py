"""``torch.compile`` (inductor, C++ on CPU) of the fast energy path of one molecule (issue #22).

``CompiledEnergy(fast)`` compiles ``FastReadoutEnergy.__call__`` with static shapes (the molecule is
fixed); the forces come from autograd through the compiled graph (AOTAutograd compiles the backward too).
It is checked before use: at the first geometry the compiled energy and gradient are compared with the
uncompiled ones, and a difference beyond ``ENERGY_TOL`` / ``GRADIENT_TOL`` (far above rounding, far below
the bugs inductor has had here: a 1e-2 relative error in the gradient of a gate, measured on torch 2.13 with
the eager network) raises ``CompileMismatch``, so a miscompiled graph is never used.

Cost (benchmarks/speed_fast.py, 2 busy cores): about two minutes of compilation per molecule and
weights on first use; inductor's on-disk caches (``TORCHINDUCTOR_CACHE_DIR``, default
/tmp/torchinductor_$USER) make a later process compile the same molecule in a fraction of that. Because
of that price, ``FastPath`` compiles only on request (``compile=True``, at the first call) or, with
``compile="auto"``, in a background thread once a molecule has been called ``AUTO_AFTER`` times (an MD
run or an optimization), the uncompiled fast path serving the calls until the compiled one is ready.
"""
from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import torch

__all__ = ["CompiledEnergy", "CompileMismatch", "compile_available", "BackgroundCompiler"]

ENERGY_TOL = 1e-6      # Hartree (27 micro-eV)
GRADIENT_TOL = 1e-5    # Hartree/Bohr (0.5 meV/Angstrom)
AUTO_AFTER = 200       # calls of one molecule before compile="auto" starts compiling it


class CompileMismatch(RuntimeError):
    """The compiled energy or gradient differs from the uncompiled one beyond the tolerances."""


def compile_available() -> tuple[bool, str]:
    """(whether torch.compile with inductor can run here, why not): needs torch.compile and a C++ compiler."""
    import importlib
    import shutil

    if not hasattr(torch, "compile"):
        return False, "this torch has no torch.compile"
    try:
        importlib.import_module("torch._inductor.cpp_builder")
    except Exception as exc:  # noqa: BLE001
        return False, f"inductor is not importable: {exc}"
    if not any(shutil.which(c) for c in ("g++", "gcc", "c++", "clang++")):
        return False, "no C++ compiler (g++/clang++) on PATH"
    return True, ""


class CompiledEnergy:
    """The compiled ``FastReadoutEnergy`` of one molecule: same call signature, checked on first use."""

    def __init__(self, fast, positions_bohr):
        self.fast = fast
        self._fn = torch.compile(fast.__call__, dynamic=False, fullgraph=True)
        start = time.perf_counter()
        pos = torch.tensor(np.asarray(positions_bohr, dtype=np.float64).reshape(-1, 3), requires_grad=True)
        e1, c1 = self._fn(pos)
        (g1,) = torch.autograd.grad(e1, pos)
        self.compile_seconds = time.perf_counter() - start
        e0, c0 = fast(pos)
        (g0,) = torch.autograd.grad(e0, pos)
        de = abs(float(e1.detach()) - float(e0.detach()))
        dg = float((g1 - g0).abs().max())
        dc = 0.0 if c0 is None else float((c1 - c0).abs().max())
        self.check = {"energy": de, "gradient": dg, "committee": dc}
        if not (de <= ENERGY_TOL and dg <= GRADIENT_TOL and dc <= ENERGY_TOL):
            raise CompileMismatch(f"the compiled energy path differs from the uncompiled one (|dE| {de:.1e} Ha, "
                                  f"max |dG| {dg:.1e} Ha/Bohr, committee {dc:.1e} Ha)")

    def __call__(self, positions):
        return self._fn(positions)


class BackgroundCompiler:
    """Compiles molecules in a daemon thread, one at a time; ``get(key)`` gives the ready ones.

    A failure (no compiler, an inductor error, ``CompileMismatch``) is remembered for that key and warned
    about once: the uncompiled fast path then stays in use."""

    def __init__(self):
        self.ready: dict = {}
        self.failed: dict = {}
        self._running = None
        self._lock = threading.Lock()

    def get(self, key):
        return self.ready.get(key)

    def busy(self) -> bool:
        return self._running is not None and self._running.is_alive()

    def start(self, key, fast, positions_bohr, background: bool = True):
        """Compile ``fast`` for ``key`` (in a thread unless ``background`` is False); no-op when it is done,
        failed, or another compilation is running."""
        with self._lock:
            if key in self.ready or key in self.failed or self.busy():
                return
            ok, why = compile_available()
            if not ok:
                self._fail(key, why)
                return
            positions_bohr = np.array(positions_bohr, dtype=np.float64)

            def work():
                try:
                    self.ready[key] = CompiledEnergy(fast, positions_bohr)
                except Exception as exc:  # noqa: BLE001 (any compile failure: keep the uncompiled path)
                    self._fail(key, f"{type(exc).__name__}: {exc}")

            if not background:
                work()
                return
            self._running = threading.Thread(target=work, name="wavecalc-compile", daemon=True)
            self._running.start()

    def wait(self, timeout=None) -> None:
        if self._running is not None:
            self._running.join(timeout)

    def _fail(self, key, why: str) -> None:
        self.failed[key] = why
        warnings.warn(f"torch.compile of the fast energy path failed ({why.splitlines()[0][:300]}); the "
                      "uncompiled fast path is used", RuntimeWarning, stacklevel=3)

    def __getstate__(self):
        return {"ready": {}, "failed": dict(self.failed), "_running": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()
