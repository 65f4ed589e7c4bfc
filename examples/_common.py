"""Small helpers shared by the example scripts (not part of the package API).

Every example takes ``--model`` (a shipped model name such as ``ethanol-pbe-def2svp`` or a model directory)
and ``--out`` (where files are written, default: the current directory).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

DEFAULT_MODELS = {"water": "water-pbe-def2svp", "ethanol": "ethanol-pbe-def2svp"}
MOLECULES = {"water": "H2O", "ethanol": "CH3CH2OH"}


def resolve_model(spec: str) -> str:
    """A model directory, or a shipped model name turned into its folder of the repository's models/
    (also before installation; ``-`` and ``_`` in the name are interchangeable). Exits with a message if
    there is no such model."""
    from ase_wavecalc.model.io import available_models

    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser())
    for name in dict.fromkeys([spec, spec.replace("-", "_"), spec.replace("_", "-")]):
        if "/" not in name and (ROOT / "models" / name).is_dir():
            return str(ROOT / "models" / name)
        if name in available_models():
            return name
    sys.exit(f"no model {spec!r}: not a directory, and the shipped models are "
             f"{available_models() or 'none yet'}. Pass --model DIR (e.g. a stand-in from "
             f"benchmarks/make_standin_model.py)")


def model_calculator(model: str, dtype: str = "float64", **kwargs):
    """``WaveCalculator(model=..., dtype=..., **kwargs)`` for a model name or directory."""
    from ase_wavecalc import WaveCalculator

    return WaveCalculator(model=resolve_model(model), dtype=dtype, **kwargs)


def pyscf_calculator(method: str = "pbe", basis: str = "def2-svp"):
    """The exact PySCF reference of the shipped models: ``WaveCalculator(method=..., basis=...)``."""
    from ase_wavecalc import WaveCalculator

    return WaveCalculator(method=method, basis=basis)


def out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def threads_note() -> str:
    import torch

    return (f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
            f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def kabsch_rmsd(a: np.ndarray, b: np.ndarray, masses: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """RMSD (same units as a, b) after the optimal translation and proper rotation of ``b`` onto ``a``;
    returns (rmsd, aligned b). Atoms are matched by index (same order)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    w = np.ones(len(a)) if masses is None else np.asarray(masses, dtype=float)
    w = w / w.sum()
    ca, cb = w @ a, w @ b
    pa, pb = a - ca, b - cb
    h = (pb * w[:, None]).T @ pa
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    aligned = pb @ rot.T + ca
    return float(np.sqrt(np.mean(np.sum((aligned - a) ** 2, axis=1)))), aligned


def bonds(atoms, scale: float = 1.2) -> list[tuple[int, int]]:
    """Covalently bonded pairs (i < j): distance below ``scale`` times the sum of covalent radii."""
    from ase_wavecalc.domain import bonded_pairs

    return [(int(i), int(j)) for i, j in bonded_pairs(atoms.numbers, atoms.positions, scale)]


def bond_label(atoms, i: int, j: int) -> str:
    s = atoms.get_chemical_symbols()
    return f"{s[i]}{i}-{s[j]}{j}"


def die(msg: str, code: int = 1):
    print(msg, file=sys.stderr)
    sys.exit(code)
