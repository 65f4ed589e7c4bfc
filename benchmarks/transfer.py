"""Transfer-learned CCSD(T) models against PBE, the PBE model and a Delta-learning MLIP (issue #12).

On held-out frames with CCSD(T) labels (the transfer model's test frames: no stage of any model here trained
on them) it prints and writes (benchmarks/results/transfer_<molecule>.json) the energy MAE (absolute and
with each method's mean error removed) and the force MAE against CCSD(T) of

  (a) PBE/def2-SVP itself (the dataset's reference at the same geometries),
  (b) the PBE model (``<mol>-pbe-def2svp``),
  (c) the transfer model (``<mol>-ccsdt-transfer``),
  (d) a Delta-learning MLIP: PBE/def2-SVP itself plus a network of the same size trained on CCSD(T) - PBE of
      the same training frames (``benchmarks/baselines/<mol>-delta-mlip``, configs/<mol>_delta_mlip.toml).

Ethanol's labels carry no forces; CCSD(T) forces on a few test frames (``benchmarks/ccsdt_forces.py``,
``data/ethanol_ccsdt_cc-pvdz_forces``) are used where present. For water it also gives the harmonic
frequencies at each method's own minimum: (a), (c), (d) and CCSD(T)/cc-pVTZ itself (BFGS on its analytic
gradient, then central differences of the gradient; ~20 gradients of ~15 s), beside experiment.

    python benchmarks/transfer.py --molecule water      # ~10 min on one core, most of it CCSD(T)
    python benchmarks/transfer.py --molecule ethanol    # ~2 min

Every row is also given per group of test frames (``by_group`` in the JSON): by the MD temperature the frame
was sampled at (the dataset rows' ``temperature``) and by its CCSD(T) energy above the lowest test frame's
(bins ``ENERGY_BINS_EV``); the offset removed there is the mean error over all frames.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_info, table, write_result  # noqa: E402

from ase_wavecalc.units import HARTREE, HARTREE_PER_BOHR  # noqa: E402  (eV per Hartree, from ase.units)

#: experimental harmonic frequencies of water, cm^-1 (bend, symmetric, antisymmetric stretch)
WATER_HARMONIC_EXPERIMENT = [1649.0, 3832.0, 3943.0]
CC_BASIS = {"water": "cc-pvtz", "ethanol": "cc-pvdz"}


#: bins of the CCSD(T) energy above the lowest test frame's (eV) for the per-group rows
ENERGY_BINS_EV = (0.0, 0.25, 0.5, 0.75, np.inf)


def _temperatures(molecule, frames):
    """The MD temperature (K) each frame was sampled at (the ``temperature`` that ``wavecalc import-npz``
    copies from the part's ``temperature_K``); NaN where the row has none."""
    from ase_wavecalc.dataset import connect

    db = connect(ROOT / "data" / f"{molecule}_pbe_def2svp.db")
    t = {int(r.frame): float(r.get("temperature", np.nan)) for r in db.select() if "frame" in r}
    return np.array([t.get(int(f), np.nan) for f in frames])


def _groups(temperatures, e_ref):
    """{group name: boolean mask over the test frames}: every frame, each MD temperature, each energy bin."""
    out = {"all": np.ones(len(e_ref), bool)}
    for t in sorted({float(t) for t in temperatures if np.isfinite(t)}):
        out[f"{t:.0f} K"] = temperatures == t
    above = e_ref - e_ref.min()
    for lo, hi in zip(ENERGY_BINS_EV[:-1], ENERGY_BINS_EV[1:]):
        mask = (above >= lo) & (above < hi)
        if mask.any():
            out[f"E-E_min {lo:g}-{hi:g} eV" if np.isfinite(hi) else f"E-E_min >= {lo:g} eV"] = mask
    return out


def _frames(molecule):
    from ase_wavecalc.dataset import read_dataset

    card = json.loads((ROOT / "models" / f"{molecule}-ccsdt-transfer" / "model.json").read_text())
    test = card["split"]["datasets"][0]["test_frames"]
    data = read_dataset(ROOT / "data" / f"{molecule}_pbe_def2svp.db",
                        keys=["e_tot", "gradient", "high_e_tot", "high_gradient"])
    where = {int(f): i for i, f in enumerate(data["frame"])}
    idx = [where[int(f)] for f in test]
    return data, idx, test


def _extra_forces(molecule, data):
    """{frame index in data: CCSD(T) gradient} from benchmarks/ccsdt_forces.py output, if any."""
    out = {}
    for part in sorted((ROOT / "data").glob(f"{molecule}_ccsdt_*_forces/part-*.npz")):
        with np.load(part) as d:
            for f, g in zip(d["frame"], d["gradient"]):
                out[list(data["frame"]).index(int(f))] = g
    return out


def _model_predictions(model, numbers, positions_bohr):
    """(energies eV (F,), forces eV/A (F, n, 3)) of a shipped model through the ASE calculator."""
    from ase import Atoms

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.units import BOHR

    calc = WaveCalculator(model=str(model))
    e, f = [], []
    for pos in positions_bohr:
        atoms = Atoms(numbers=numbers, positions=pos * BOHR)
        atoms.calc = calc
        e.append(atoms.get_potential_energy())
        f.append(atoms.get_forces())
    return np.array(e), np.array(f)


def _errors(e, f, e_ref, f_ref, f_mask, subset=None):
    """Errors on the frames ``subset`` (boolean mask; default all). The offset removed is the mean energy
    error over all frames, so that a group's offset-removed MAE keeps its own shift against the rest."""
    de = (e - e_ref) * 1e3
    offset = de.mean()
    sub = np.ones(len(de), bool) if subset is None else subset
    de_s = de[sub]
    out = {"n_frames": int(sub.sum()), "energy_mae_mev": float(np.abs(de_s).mean()),
           "energy_mae_offset_removed_mev": float(np.abs(de_s - offset).mean()),
           "energy_max_offset_removed_mev": float(np.abs(de_s - offset).max()),
           "energy_mean_error_mev": float(de_s.mean())}
    fm = f_mask & sub
    if fm.any():
        out["force_mae_mev_a"] = float(np.abs(f[fm] - f_ref[fm]).mean() * 1e3)
        out["n_force_frames"] = int(fm.sum())
    return out


def accuracy(molecule: str, log=print) -> dict:
    data, idx, test = _frames(molecule)
    numbers, pos = data["numbers"], data["positions_bohr"][idx]
    e_cc = data["high_e_tot"][idx] * HARTREE
    f_cc = -data["high_gradient"][idx] * HARTREE_PER_BOHR
    extra = _extra_forces(molecule, data)
    for k, i in enumerate(idx):
        if i in extra:
            f_cc[k] = -extra[i] * HARTREE_PER_BOHR
    f_mask = np.isfinite(f_cc).all(axis=(1, 2))
    e_pbe, f_pbe = data["e_tot"][idx] * HARTREE, -data["gradient"][idx] * HARTREE_PER_BOHR
    rows = {"(a) PBE/def2-SVP itself": (e_pbe, f_pbe)}
    t0 = time.perf_counter()
    rows["(b) PBE model"] = _model_predictions(ROOT / "models" / f"{molecule}-pbe-def2svp", numbers, pos)
    rows["(c) transfer model"] = _model_predictions(ROOT / "models" / f"{molecule}-ccsdt-transfer", numbers, pos)
    delta = ROOT / "benchmarks" / "baselines" / f"{molecule}-delta-mlip"
    if (delta / "model.json").is_file():
        de, df = _model_predictions(delta, numbers, pos)
        rows["(d) PBE + Delta-MLIP"] = (e_pbe + de, f_pbe + df)
    else:
        log(f"warning: {delta} not found (configs/{molecule}_delta_mlip.toml trains it): row (d) left out")
    log(f"{molecule}: {len(idx)} held-out frames, models evaluated in {time.perf_counter() - t0:.0f} s")
    temps = _temperatures(molecule, test)
    groups = _groups(temps, e_cc)
    return {"n_frames": len(idx), "test_frames": [int(f) for f in test], "n_force_frames": int(f_mask.sum()),
            "reference": f"CCSD(T)/{CC_BASIS[molecule]}",
            "test_frame_temperatures_K": [None if not np.isfinite(t) else float(t) for t in temps],
            "energy_bins_ev": "CCSD(T) energy above the lowest test frame's",
            "methods": {name: _errors(e, f, e_cc, f_cc, f_mask) for name, (e, f) in rows.items()},
            "by_group": {g: {name: _errors(e, f, e_cc, f_cc, f_mask, mask) for name, (e, f) in rows.items()}
                         for g, mask in groups.items() if g != "all"}}


# ----------------------------------------------------------------------------------------------------
# water: harmonic frequencies at each method's own minimum


class CCSDTCalculator(Calculator):
    """CCSD(T) energy and analytic forces (``ase_wavecalc.correlated``) as a minimal ASE calculator."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, basis: str, **kwargs):
        super().__init__(**kwargs)
        self.basis = basis

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from ase_wavecalc.correlated import run_correlated
        from ase_wavecalc.units import BOHR

        super().calculate(atoms, properties, system_changes)
        r = run_correlated(self.atoms.numbers, self.atoms.positions / BOHR, "ccsd(t)", self.basis)
        self.results = {"energy": float(r["e_tot"]) * HARTREE, "forces": -r["gradient"] * HARTREE_PER_BOHR}


def _frequencies(atoms, calc, hessian: str) -> tuple[list[float], int]:
    """Harmonic frequencies (cm^-1, the 3 largest) at the minimum ``calc`` finds from ``atoms``, and the
    number of force calls. ``hessian``: "analytic" (calc.get_hessian) or "fd" (ase.vibrations.Vibrations)."""
    from ase.optimize import BFGS
    from ase.vibrations import VibrationsData

    atoms = atoms.copy()
    atoms.calc = calc
    opt = BFGS(atoms, logfile=None)
    # 1e-3 eV/A: tighter chases the DFT grid's force noise (~1e-4 eV/A), and BFGS then wanders
    converged = opt.run(fmax=1e-3, steps=300)
    if not converged:
        raise RuntimeError(f"BFGS did not reach fmax 1e-3 eV/A in 300 steps with {calc!r}")
    calls = opt.nsteps + 1
    if hessian == "analytic":
        freqs = VibrationsData.from_2d(atoms, calc.get_hessian(atoms)).get_frequencies()
    else:   # ASE's central differences of the forces, 0.005 A
        import tempfile

        from ase.vibrations import Vibrations

        with tempfile.TemporaryDirectory() as tmp:
            vib = Vibrations(atoms, name=str(Path(tmp) / "vib"), delta=5e-3, nfree=2)
            vib.run()
            freqs = vib.get_frequencies()
        calls += 6 * len(atoms)
    return sorted(float(np.real(f)) for f in freqs)[-3:], calls


def water_frequencies(skip_ccsdt: bool = False, reuse: dict | None = None, log=print) -> dict:
    from ase.build import molecule
    from ase.calculators.mixing import SumCalculator

    from ase_wavecalc import WaveCalculator

    water = molecule("H2O")
    out = {"experiment (harmonic)": {"cm-1": WATER_HARMONIC_EXPERIMENT}}
    runs = [("(a) PBE/def2-SVP itself", lambda: WaveCalculator(method="pbe", basis="def2-svp"), "analytic"),
            ("(c) transfer model", lambda: WaveCalculator(model=str(ROOT / "models" / "water-ccsdt-transfer")),
             "analytic")]
    delta = ROOT / "benchmarks" / "baselines" / "water-delta-mlip"
    if (delta / "model.json").is_file():
        runs.append(("(d) PBE + Delta-MLIP", lambda: SumCalculator(
            [WaveCalculator(method="pbe", basis="def2-svp"), WaveCalculator(model=str(delta))]), "fd"))
    if reuse and "CCSD(T)/cc-pVTZ itself" in reuse:
        out["CCSD(T)/cc-pVTZ itself"] = dict(reuse["CCSD(T)/cc-pVTZ itself"], reused=True)
    elif not skip_ccsdt:
        runs.append(("CCSD(T)/cc-pVTZ itself", lambda: CCSDTCalculator("cc-pvtz"), "fd"))
    for name, make, kind in runs:
        t0 = time.perf_counter()
        freqs, calls = _frequencies(water, make(), kind)
        out[name] = {"cm-1": freqs, "force_calls": calls, "seconds": time.perf_counter() - t0,
                     "hessian": "analytic (autograd or PySCF)" if kind == "analytic" else "central differences of forces"}
        log(f"  {name}: {', '.join(f'{f:.1f}' for f in freqs)} cm-1 ({time.perf_counter() - t0:.0f} s)")
    if "CCSD(T)/cc-pVTZ itself" in out:
        ref = np.array(out["CCSD(T)/cc-pVTZ itself"]["cm-1"])
        for name, entry in out.items():
            entry["max_abs_dev_from_ccsdt_cm-1"] = float(np.abs(np.array(entry["cm-1"]) - ref).max())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecule", choices=("water", "ethanol"), required=True)
    p.add_argument("--skip-ccsdt-frequencies", action="store_true",
                   help="water: leave out CCSD(T)/cc-pVTZ's own frequencies (the slow part)")
    p.add_argument("--reuse-ccsdt", default=None, metavar="JSON",
                   help="water: take CCSD(T)/cc-pVTZ's frequencies from an earlier result of this script")
    p.add_argument("--json", default=None, help="JSON path (default benchmarks/results/transfer_<molecule>.json)")
    args = p.parse_args(argv)

    result = {"machine": machine_info(), "accuracy": accuracy(args.molecule)}
    acc = result["accuracy"]
    print(f"\n{args.molecule}: {acc['n_frames']} held-out frames against {acc['reference']} "
          f"(forces on {acc['n_force_frames']} of them)")
    groups = {"all": acc["methods"], **acc.get("by_group", {})}
    rows = [[name, g, str(m["n_frames"]), f"{m['energy_mae_mev']:.2f}", f"{m['energy_mae_offset_removed_mev']:.2f}",
             f"{m['energy_mean_error_mev']:+.2f}",
             f"{m['force_mae_mev_a']:.1f} ({m['n_force_frames']})" if "force_mae_mev_a" in m else ""]
            for name in acc["methods"] for g, by in groups.items() for m in [by[name]]]
    print(table(["method", "frames", "n", "E MAE (meV)", "E MAE, offset removed", "mean error",
                 "F MAE (meV/A) (frames)"], rows))
    print("offset removed: the mean error over all frames; E_min: the lowest CCSD(T) energy of the test frames")
    if args.molecule == "water":
        print("\nwater harmonic frequencies at each method's own minimum (cm^-1):")
        reuse = None
        if args.reuse_ccsdt:
            reuse = json.loads(Path(args.reuse_ccsdt).read_text()).get("water_frequencies")
        freqs = water_frequencies(args.skip_ccsdt_frequencies, reuse)
        result["water_frequencies"] = freqs
        rows = [[name, *[f"{f:.1f}" for f in e["cm-1"]],
                 f"{e['max_abs_dev_from_ccsdt_cm-1']:.1f}" if "max_abs_dev_from_ccsdt_cm-1" in e else ""]
                for name, e in freqs.items()]
        print(table(["method", "bend", "sym. stretch", "antisym. stretch", "max |dev| from CCSD(T)"], rows))
    path = write_result(f"transfer_{args.molecule}", result, args.json)
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
