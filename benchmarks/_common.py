"""Helpers shared by the benchmark scripts: timing, machine information, tables, JSON results.

Timing rules (every script): warm-up calls are run and discarded, then ``repeats`` timed calls; the
median is reported (with min and max). Speeds are reported as ratios against references timed in the
same process, one after the other, so that a loaded machine slows both sides alike.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def _examples_common():
    """examples/_common.py, which owns the model names and their resolution (one copy for both folders)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_wavecalc_examples_common", ROOT / "examples" / "_common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_EX = _examples_common()
DEFAULT_MODELS, MOLECULES, resolve_model = _EX.DEFAULT_MODELS, _EX.MOLECULES, _EX.resolve_model


def time_call(fn, repeats: int, warmup: int = 1) -> dict:
    """Run ``fn()`` ``warmup`` times untimed, then ``repeats`` times; seconds: median, min, max, all."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples),
            "repeats": len(samples), "warmup": warmup, "samples_s": samples}


def machine_info() -> dict:
    """Cores, threads, load, CPU and library versions (recorded with every result)."""
    import torch

    info = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_start": list(os.getloadavg()),
        "versions": {"torch": torch.__version__},
    }
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu_model"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu_model"] = platform.processor()
    for mod in ("pyscf", "ase", "e3nn", "tblite", "numpy"):
        try:
            info["versions"][mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 (optional packages)
            pass
    return info


def finish_machine_info(info: dict) -> dict:
    info["load_average_end"] = list(os.getloadavg())
    return info


def machine_line(info: dict) -> str:
    la = info["load_average_start"]
    return (f"machine: {info.get('cpu_model')}, {info['cpus_usable']} usable cores, torch threads "
            f"{info['torch_threads']}, OMP_NUM_THREADS={info['OMP_NUM_THREADS']}, load average "
            f"{la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")


def write_result(name: str, payload: dict, out: str | None = None) -> Path:
    """Write ``payload`` as JSON to ``out`` (default benchmarks/results/NAME.json)."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _json_default(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
    except ImportError:
        pass
    return str(x)


def table(header: list[str], rows: list[list], widths: list[int] | None = None) -> str:
    """A plain-text table; first column left-aligned, others right-aligned."""
    widths = widths or [max(len(str(h)), *(len(str(r[i])) for r in rows)) + 2 for i, h in enumerate(header)]
    fmt = lambda cells: "".join(  # noqa: E731
        (f"{str(c):<{w}}" if i == 0 else f"{str(c):>{w}}") for i, (c, w) in enumerate(zip(cells, widths)))
    lines = [fmt(header), "-" * sum(widths)]
    lines += [fmt(r) for r in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.2f}"


def warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)
