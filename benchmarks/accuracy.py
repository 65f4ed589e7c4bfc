"""Accuracy of the shipped models on their held-out test frames, against the PySCF reference in the dataset.

For each model, the model card's ``split`` names the dataset(s) and the test frame ids (never seen in
training or validation). Each test frame goes through ``WaveCalculator(model=...)`` once (energy, forces,
F); the predicted F is compared with the stored PySCF Fock matrix using the functions of
``ase_wavecalc.train.metrics`` (``fock_errors``, ``orbital_errors``, ``mean_metrics``), with the stored
(exact) overlap. Reported against the targets:

| metric | unit | meaning |
|---|---|---|
| F MAE | micro-Hartree | mean |F_pred - F_ref| over all matrix elements, averaged over frames |
| eps MAE | micro-Hartree | mean |eps_pred - eps_ref| over occupied orbitals (F C = S C eps, same S) |
| cos | 1 | occupied-orbital cosine similarity (degeneracy-aware, see metrics.py) |
| E MAE | meV per molecule | |E_pred - E_ref| of the total energy (no offset removed) |
| F(orces) MAE | meV/Angstrom | mean |f_pred - f_ref| over all force components |

For scale, the same frames through GFN2-xTB (tblite): energy MAE after removing the mean offset (xTB's
energy zero differs from DFT's) and force MAE.

    python benchmarks/accuracy.py                                  # both shipped models, all test frames
    python benchmarks/accuracy.py --model /tmp/standin-model --max-frames 5

Writes benchmarks/results/accuracy.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import (DEFAULT_MODELS, ROOT, finish_machine_info, machine_info, machine_line, resolve_model, table,
                     warn, write_result)

# per dataset kind: metric -> (target, "max" (value must be <= target) or "min" (>=))
TARGETS = {
    "water": {"fock_mae_uha": (20.0, "max"), "eps_occ_mae_uha": (100.0, "max"), "orbital_cosine": (0.999, "min"),
              "energy_mae_meV": (5.0, "max"), "force_mae_meV_A": (30.0, "max")},
    "ethanol": {"fock_mae_uha": (30.0, "max"), "eps_occ_mae_uha": (150.0, "max"), "orbital_cosine": (0.999, "min"),
                "energy_mae_meV": (10.0, "max"), "force_mae_meV_A": (50.0, "max")},
}
LABELS = [("fock_mae_uha", "F MAE (uHa)", ".2f"), ("eps_occ_mae_uha", "occ. eps MAE (uHa)", ".2f"),
          ("orbital_cosine", "occ. orbital cosine", ".6f"), ("energy_mae_meV", "E MAE (meV/molecule)", ".3f"),
          ("force_mae_meV_A", "force MAE (meV/A)", ".2f")]
EXTRA = [("fock_max_abs_uha", "F max |error| (uHa)", ".1f"), ("homo_mae_uha", "HOMO MAE (uHa)", ".2f"),
         ("gap_mae_uha", "gap MAE (uHa)", ".2f"), ("occupied_subspace", "occupied subspace overlap", ".6f"),
         ("energy_mae_offset_removed_meV", "E MAE, mean offset removed (meV)", ".3f"),
         ("energy_max_abs_meV", "E max |error| (meV)", ".3f")]


def dataset_kind(name: str) -> str | None:
    low = name.lower()
    return next((k for k in TARGETS if k in low), None)


def read_card(spec: str) -> dict:
    path = Path(spec)
    if not path.is_dir():
        from ase_wavecalc.model.io import _resolve  # the loader's own name resolution

        path = _resolve(spec)
    return json.loads((path / "model.json").read_text())


def model_calc(spec: str, dtype: str):
    from ase.calculators.calculator import InputError

    from ase_wavecalc import WaveCalculator

    if dtype == "float64":
        return WaveCalculator(model=spec)
    try:
        return WaveCalculator(model=spec, dtype=dtype)
    except InputError as exc:
        if "dtype" not in str(exc):
            raise
        from ase_wavecalc.providers import ModelProvider

        return WaveCalculator(provider=ModelProvider(spec, dtype=dtype))


def evaluate(calc, dataset: Path, frame_ids: list[int], xtb: bool) -> dict:
    """Metrics of the WaveCalculator ``calc`` on the given frames of ``dataset`` (and of GFN2-xTB)."""
    import torch
    from ase import Atoms
    from ase.calculators.calculator import PropertyNotImplementedError, all_changes

    from ase_wavecalc.basis import BasisLayout
    from ase_wavecalc.dataset import read_dataset
    from ase_wavecalc.energy import n_occupied
    from ase_wavecalc.train.metrics import fock_errors, mean_metrics, orbital_errors
    from ase_wavecalc.units import BOHR, HARTREE

    t0 = time.perf_counter()
    data = read_dataset(dataset, keys=("fock", "overlap", "e_tot", "gradient"))
    t_read = time.perf_counter() - t0
    index = {int(f): i for i, f in enumerate(data["frame"])}
    missing = [f for f in frame_ids if f not in index]
    if missing:
        warn(f"{dataset.name}: {len(missing)} test frame ids are not in the file (e.g. {missing[:5]}); skipped")
    rows = np.array([index[f] for f in frame_ids if f in index], dtype=int)
    if len(rows) == 0:
        raise ValueError(f"{dataset}: none of the test frames is in the file")
    numbers = data["numbers"]
    try:                                 # a Hamiltonian-only model has no energy or forces
        calc.provider.require_energy()
        has_energy = True
    except PropertyNotImplementedError:
        has_energy = False
    e_pred, f_pred, fock_pred, seconds = [], [], [], []
    for r in rows:
        atoms = Atoms(numbers=numbers, positions=data["positions_bohr"][r] * BOHR)
        t0 = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"] if has_energy else ["dipole"], all_changes)
        seconds.append(time.perf_counter() - t0)
        if has_energy:
            e_pred.append(calc.results["energy"])
            f_pred.append(calc.results["forces"])
        fock_pred.append(calc.get_hamiltonian())
    e_ref = data["e_tot"][rows] * HARTREE
    f_ref = -data["gradient"][rows] * HARTREE / BOHR
    e_pred, f_pred = np.array(e_pred), np.array(f_pred)

    basis = calc.provider.basis
    ao_atom = torch.as_tensor(BasisLayout(basis, sorted(set(int(z) for z in numbers))).ao_atom(numbers))
    pred = torch.as_tensor(np.array(fock_pred))
    ref = torch.as_tensor(data["fock"][rows])
    parts = fock_errors(pred, ref, ao_atom)
    parts.update(orbital_errors(pred, ref, torch.as_tensor(data["overlap"][rows]), n_occupied(numbers)))
    metrics = mean_metrics({k: [v] for k, v in parts.items()})
    metrics.update({
        "n_frames": int(len(rows)), "read_seconds": t_read,
        # the first call loads and warms up the model: excluded when there are others
        "seconds_per_frame_median": float(np.median(seconds[1:] if len(seconds) > 1 else seconds)),
    })
    # a Hamiltonian-only model has no energy or forces: None ("not trained" in the table)
    energy_keys = ("energy_mae_meV", "energy_max_abs_meV", "energy_mae_offset_removed_meV", "force_mae_meV_A",
                   "force_max_abs_meV_A")
    metrics.update(dict.fromkeys(energy_keys))
    if has_energy:
        de, df = e_pred - e_ref, np.abs(f_pred - f_ref)
        metrics.update({
            "energy_mae_meV": 1e3 * float(np.mean(np.abs(de))),
            "energy_max_abs_meV": 1e3 * float(np.max(np.abs(de))),
            "energy_mae_offset_removed_meV": 1e3 * float(np.mean(np.abs(de - de.mean()))),
            "force_mae_meV_A": 1e3 * float(df.mean()),
            "force_max_abs_meV_A": 1e3 * float(df.max()),
        })
    out = {"model": metrics}
    if xtb:
        try:
            from tblite.ase import TBLite
        except ImportError:
            warn("tblite is not installed: no GFN2-xTB comparison")
        else:
            e_x, f_x = [], []
            t0 = time.perf_counter()
            for r in rows:
                atoms = Atoms(numbers=numbers, positions=data["positions_bohr"][r] * BOHR)
                atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
                e_x.append(atoms.get_potential_energy())
                f_x.append(atoms.get_forces())
            dx = np.array(e_x) - e_ref
            out["gfn2_xtb"] = {
                "energy_mae_offset_removed_meV": 1e3 * float(np.mean(np.abs(dx - dx.mean()))),
                "energy_offset_eV": float(dx.mean()),
                "force_mae_meV_A": 1e3 * float(np.mean(np.abs(np.array(f_x) - f_ref))),
                "seconds_per_frame": (time.perf_counter() - t0) / len(rows),
            }
    return out


def reference_check(dataset: Path, frames: list[int], card: dict) -> dict:
    """The pipeline with PySCF itself in place of the model: F, eps, E and force errors must be ~0."""
    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.providers import reference_provider_for

    reference = reference_provider_for(card)          # PySCF at the card's level of theory
    method = reference.method
    calc = WaveCalculator(provider=reference)
    m = evaluate(calc, dataset, frames, xtb=False)["model"]
    keys = ("fock_mae_uha", "eps_occ_mae_uha", "orbital_cosine", "energy_mae_meV", "force_mae_meV_A")
    print(f"  reference self-check (PySCF {method} through the same pipeline, {len(frames)} frames): "
          + ", ".join(f"{k} {m[k]:.3g}" for k in keys))
    return {k: m[k] for k in keys}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", nargs="+", default=list(DEFAULT_MODELS.values()),
                        help="model names or directories (each is evaluated on the test split its card lists)")
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="where the dataset files named in the "
                                                                      "model cards are")
    parser.add_argument("--max-frames", type=int, default=None, help="at most this many test frames per dataset")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="network precision")
    parser.add_argument("--no-xtb", action="store_true", help="skip the GFN2-xTB comparison")
    parser.add_argument("--check-reference", type=int, default=0, metavar="K",
                        help="self-check: recompute the first K test frames with WaveCalculator(method='pbe') "
                             "through the same pipeline (all errors must be ~0)")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/accuracy.json)")
    args = parser.parse_args(argv)

    info = machine_info()
    print(machine_line(info))
    results = {"benchmark": "accuracy", "machine": info, "targets": TARGETS, "dtype": args.dtype, "evaluations": []}
    status = 0
    for model_ref in args.model:
        spec = resolve_model(model_ref)
        try:
            card = read_card(spec)
        except Exception as exc:  # noqa: BLE001 (report and go on with the next model)
            warn(f"cannot read the model card of {model_ref!r}: {exc}")
            status = 1
            continue
        split = (card.get("split") or {}).get("datasets", [])
        if not split:
            warn(f"{model_ref}: the model card lists no test split; skipped")
            status = 1
            continue
        for entry in split:
            name = Path(entry.get("name", entry.get("path", ""))).name
            dataset = Path(args.data_dir) / name
            if not dataset.is_file():
                warn(f"{model_ref}: dataset {dataset} not found; skipped")
                status = 1
                continue
            frames = list(entry.get("test_frames", entry.get("test", [])))
            if not frames:
                print(f"\n{model_ref} on {name}: no test frames (training and validation only); skipped")
                continue
            if args.max_frames is not None:
                frames = frames[: args.max_frames]
            print(f"\n{model_ref} on {name}: {len(frames)} test frames")
            res = evaluate(model_calc(spec, args.dtype), dataset, frames, not args.no_xtb)
            kind = dataset_kind(name)
            targets = TARGETS.get(kind, {})
            rows = []
            passed = {}
            for key, label, fmt in LABELS:
                value = res["model"].get(key)
                target = targets.get(key)
                ok = None
                if target is not None and value is not None:
                    ok = value <= target[0] if target[1] == "max" else value >= target[0]
                    passed[key] = ok
                tgt = "-" if target is None else f"{'<=' if target[1] == 'max' else '>='} {target[0]:g}"
                x = res.get("gfn2_xtb", {})
                xval = {"energy_mae_meV": x.get("energy_mae_offset_removed_meV"),
                        "force_mae_meV_A": x.get("force_mae_meV_A")}.get(key)
                shown = ("not trained" if key in ("energy_mae_meV", "force_mae_meV_A") else "-")
                rows.append([label, tgt, shown if value is None else format(value, fmt),
                             "-" if ok is None else ("yes" if ok else "NO"),
                             "-" if xval is None else format(xval, ".2f") + ("*" if key == "energy_mae_meV" else "")])
            print(table(["metric", "target", "model", "met", "GFN2-xTB"], rows))
            for key, label, fmt in EXTRA:
                if res["model"].get(key) is not None:
                    print(f"  {label:<36}{format(res['model'][key], fmt):>14}")
            m = res["model"]
            print(f"  model {1e3 * m['seconds_per_frame_median']:.1f} ms/frame (energy+forces+F, median); "
                  f"(* xTB energy after removing its mean offset of "
                  f"{res.get('gfn2_xtb', {}).get('energy_offset_eV', float('nan')):.3f} eV)")
            evaluation = {"model": model_ref, "model_path": spec, "dataset": name, "kind": kind,
                          "standin": bool(card.get("standin", False)), "frames": frames, "targets_met": passed, **res}
            if args.check_reference > 0:
                evaluation["reference_check"] = reference_check(dataset, frames[: args.check_reference], card)
            results["evaluations"].append(evaluation)
    finish_machine_info(info)
    path = write_result("accuracy", results, args.json)
    print(f"\nwritten {path}")
    return status


if __name__ == "__main__":
    sys.exit(main())
