"""Bit-identity check of a refactoring (not a test, not a benchmark): every shipped model's outputs through
WaveCalculator (energy, forces, F, eigenvalues, dipole, charges, energy_std/forces_std where there is a
committee, the Hessian of the water models), plain and with out_of_domain="reference", on two fixed geometries,
and the raw network outputs (full and energy_only forward).

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/_energy_path_snapshot.py save /tmp/before.npz
    (change the code)
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/_energy_path_snapshot.py save /tmp/after.npz
    python benchmarks/_energy_path_snapshot.py compare /tmp/before.npz /tmp/after.npz

Arrays present in both files are compared with np.array_equal; arrays only in the second file computed with
the fallback are compared with the plain model's (capabilities the fallback gained).

The calculators use the eager network (``fast=None``) where the code has a fast path (``model/fast.py``), so
the check stays bit for bit; ``save PATH --fast float32`` (or float64) uses the fast path instead, and
``compare BEFORE AFTER --fast float32`` then compares energy, forces and energy_std within the bounds of
tests/test_fast_energy.py (everything else, which comes from the eager network, still bit for bit).
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


#: fast path against the eager network (tests/test_fast_energy.py): energy and gradient bounds (Hartree,
#: Hartree/Bohr), energy_std (eV)
FAST_BOUNDS = {"float64": (1e-10, 1e-10, 1e-3), "float32": (2e-5, 2e-5, 1e-3)}


def save(path: str, fast: str | None = None) -> None:
    import torch
    from ase.build import molecule

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.model.io import load_model
    from ase_wavecalc.units import BOHR

    warnings.simplefilter("ignore")
    # the eager network unless a fast mode is asked for (code before model/fast.py has no such parameter)
    fast_kw = {"fast": None if fast in (None, "none") else fast} if "fast" in WaveCalculator.default_parameters else {}
    models = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "model.json").is_file())
    out = {}
    for name in models:
        water = name.startswith("water")
        base = molecule("H2O" if water else "CH3CH2OH")
        moved = base.copy()
        moved.positions += np.random.default_rng(7).normal(scale=0.03, size=base.positions.shape)
        for g, geometry in enumerate((base, moved)):
            for variant, kw in (("plain", {}), ("fallback", {"out_of_domain": "reference"})):
                atoms = geometry.copy()
                atoms.calc = calc = WaveCalculator(model=name, **kw, **fast_kw)
                key = f"{name}/{g}/{variant}"
                try:
                    out[key + "/energy"] = np.array(atoms.get_potential_energy())
                except Exception as exc:          # a transfer model refuses the fallback
                    print(key, "refused:", type(exc).__name__)
                    continue
                out[key + "/forces"] = atoms.get_forces()
                for prop in ("energy_std", "forces_std"):
                    try:
                        out[f"{key}/{prop}"] = np.array(calc.get_property(prop, atoms))
                    except Exception as exc:
                        print(key, f"no {prop}:", type(exc).__name__)
                out[key + "/dipole"] = atoms.get_dipole_moment()
                out[key + "/charges"] = atoms.get_charges()
                out[key + "/fock"] = calc.get_hamiltonian()
                out[key + "/eps"] = calc.get_eigenvalues()
                if water:
                    try:
                        out[key + "/hessian"] = calc.get_hessian(atoms)
                    except Exception as exc:
                        print(key, "no hessian:", type(exc).__name__)
        net, _ = load_model(name)
        z = torch.as_tensor(base.numbers)
        pos = torch.as_tensor(base.positions / BOHR, dtype=next(net.parameters()).dtype)
        for energy_only in (False, True):
            try:
                result = net(z, pos, None, energy_only=energy_only)
            except ValueError as exc:
                print(name, "energy_only" if energy_only else "full", "refused:", exc)
                continue
            for k, v in result.items():
                out[f"net/{name}/{energy_only}/{k}"] = (v[0] if isinstance(v, list) else v).detach().numpy()
    np.savez(path, **out)
    print(f"saved {len(out)} arrays to {path}")


def _within(key: str, x, y, fast: str | None) -> bool:
    if fast not in FAST_BOUNDS or key.startswith("net/"):
        return np.array_equal(x, y)
    from ase_wavecalc.units import BOHR, HARTREE

    e_tol, g_tol, std_tol = FAST_BOUNDS[fast]
    bounds = {"energy": e_tol * HARTREE, "forces": g_tol * HARTREE / BOHR, "energy_std": std_tol}
    bound = bounds.get(key.rsplit("/", 1)[-1])
    return np.array_equal(x, y) if bound is None else bool(np.abs(x - y).max() < bound)


def compare(before: str, after: str, fast: str | None = None) -> int:
    a, b = np.load(before), np.load(after)
    common = sorted(set(a.files) & set(b.files))
    lost, new = sorted(set(a.files) - set(b.files)), sorted(set(b.files) - set(a.files))
    bad = [k for k in common if not _within(k, a[k], b[k], fast)]
    for k in bad:
        print("DIFFERS", k, float(np.abs(a[k] - b[k]).max()))
    if fast in FAST_BOUNDS:
        for q in ("energy", "forces", "energy_std"):
            keys = [k for k in common if k.endswith("/" + q) and not k.startswith("net/")]
            print(f"fast={fast}: largest {q} difference {max(float(np.abs(a[k] - b[k]).max()) for k in keys):.3g}")
    what = "bit-identical" if fast not in FAST_BOUNDS else f"bit-identical or within the fast={fast} bounds"
    print(f"{len(common) - len(bad)} / {len(common)} arrays {what}; only before: {lost}")
    gained = [k for k in new if "/fallback/" in k]
    same = [k for k in gained if np.array_equal(b[k], b[k.replace("/fallback/", "/plain/")])]
    print(f"arrays only after: {new}; of them computed with the fallback and equal to the plain model's: "
          f"{len(same)} / {len(gained)}")
    return 1 if bad or lost or len(same) != len(gained) else 0


if __name__ == "__main__":
    mode = sys.argv[sys.argv.index("--fast") + 1] if "--fast" in sys.argv else None
    if sys.argv[1] == "save":
        save(sys.argv[2], mode)
    else:
        sys.exit(compare(sys.argv[2], sys.argv[3], mode))
