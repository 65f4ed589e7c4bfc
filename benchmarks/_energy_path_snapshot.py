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
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def save(path: str) -> None:
    import torch
    from ase.build import molecule

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.model.io import load_model
    from ase_wavecalc.units import BOHR

    warnings.simplefilter("ignore")
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
                atoms.calc = calc = WaveCalculator(model=name, **kw)
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


def compare(before: str, after: str) -> int:
    a, b = np.load(before), np.load(after)
    common = sorted(set(a.files) & set(b.files))
    lost, new = sorted(set(a.files) - set(b.files)), sorted(set(b.files) - set(a.files))
    bad = [k for k in common if not np.array_equal(a[k], b[k])]
    for k in bad:
        print("DIFFERS", k, float(np.abs(a[k] - b[k]).max()))
    print(f"{len(common) - len(bad)} / {len(common)} arrays bit-identical; only before: {lost}")
    gained = [k for k in new if "/fallback/" in k]
    same = [k for k in gained if np.array_equal(b[k], b[k.replace("/fallback/", "/plain/")])]
    print(f"arrays only after: {new}; of them computed with the fallback and equal to the plain model's: "
          f"{len(same)} / {len(gained)}")
    return 1 if bad or lost or len(same) != len(gained) else 0


if __name__ == "__main__":
    if sys.argv[1] == "save":
        save(sys.argv[2])
    else:
        sys.exit(compare(sys.argv[2], sys.argv[3]))
