"""Energy paths side by side: accuracy on held-out frames, cost per call and Langevin MD stability.

Each model is given as ``LABEL=MODEL`` (a shipped name or a model directory). For each: on the test frames
of its card's split of the dataset (frames no training stage saw), the energy MAE (meV per molecule; the
per-element offsets were refit on training frames at export), the force MAE (meV/A per component), and,
where the model's Fock head was trained (card loss with F terms), the F MAE and the occupied orbital
energy MAE (micro-Hartree); then the median time of one energy+forces call through ``WaveCalculator``
(float64, torch threads as set, new positions every call) and, with ``--md-steps``, Langevin runs
(``ase_wavecalc.md.run_md``, 0.5 fs, friction 0.01/fs) until the model refuses a geometry or the steps are
done. One process, one model after the other, so every ratio is measured on the same machine state.

    python benchmarks/energy_paths.py --dataset data/ethanol_pbe_def2svp.db \
        --model readout=models/ethanol-pbe-def2svp hamiltonian=runs/old_model mlip=runs/ethanol_mlip_model \
        --md-steps 2000 --temperatures 300 500 --seeds 1 2 3

Writes benchmarks/results/energy_paths_<dataset stem>.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from _common import finish_machine_info, machine_info, machine_line, resolve_model, table, time_call, write_result


def read_card(model: str) -> dict:
    from ase_wavecalc.model.io import _resolve

    path = Path(model) if Path(model).is_dir() else _resolve(model)
    return json.loads((Path(path) / "model.json").read_text())


def fock_trained(card: dict) -> bool:
    """Whether the model's F was trained (card ``fock_trained``; older cards: an F term in a stage's loss).
    An energy-only network's F is noise."""
    if "fock_trained" in card:
        return bool(card["fock_trained"])
    stages = card.get("training_stages") or [{"loss": (card.get("training") or {}).get("loss", {})}]
    return any(float(w) > 0 for st in stages for k, w in (st.get("loss") or {}).items()
               if k.startswith(("fock", "orbital")))


def test_frames(card: dict, dataset: Path) -> list[int]:
    for entry in card["split"]["datasets"]:
        if entry["name"] == dataset.name:
            return [int(f) for f in entry["test_frames"]]
    raise SystemExit(f"the model card has no split for {dataset.name}: its test frames are unknown")


def accuracy(model: str, card: dict, data: dict, frames: list[int]) -> dict:
    """Errors on the given frames (float64 network; the calculator's provider)."""
    from ase_wavecalc.providers import ModelProvider
    from ase_wavecalc.units import HARTREE, HARTREE_PER_BOHR

    provider = ModelProvider(model)
    index = {int(f): i for i, f in enumerate(data["frame"])}
    with_fock = fock_trained(card)
    de, df, dF, deps = [], [], [], []
    for f in frames:
        i = index[f]
        res = provider.compute(data["numbers"], data["positions_bohr"][i], want_gradient=True)
        de.append((res.energy - data["e_tot"][i]) * HARTREE * 1e3)
        df.append(np.abs(res.gradient - data["gradient"][i]).reshape(-1) * HARTREE_PER_BOHR * 1e3)
        if with_fock:
            dF.append(np.abs(res.fock - data["fock"][i]).mean() * 1e6)
            n = res.n_occ
            ref = np.linalg.eigvalsh(_orth(data["fock"][i], res.overlap))[:n]
            deps.append(np.abs(np.asarray(res.mo_energy[:n]) - ref).mean() * 1e6)
    de = np.asarray(de)
    out = {"n_frames": len(frames), "energy_mae_mev": float(np.abs(de).mean()),
           "energy_mae_offset_removed_mev": float(np.abs(de - de.mean()).mean()),
           "energy_max_mev": float(np.abs(de).max()), "force_mae_mev_a": float(np.concatenate(df).mean()),
           "force_max_mev_a": float(np.concatenate(df).max())}
    if with_fock:
        out.update(fock_mae_uha=float(np.mean(dF)), eps_occ_mae_uha=float(np.mean(deps)))
    return out


def _orth(fock, overlap):
    s, u = np.linalg.eigh(overlap)
    x = u / np.sqrt(s)
    return x.T @ fock @ x


def speed(model: str, repeats: int) -> dict:
    """Median seconds of one energy+forces call on ethanol-like geometries (new positions each call)."""
    from ase.build import molecule

    from ase_wavecalc import WaveCalculator

    card = read_card(model)
    formula = (card.get("datasets") or [{}])[0].get("formula") or "C2H6O"
    atoms = molecule({"C2H6O": "CH3CH2OH", "H2O": "H2O"}.get(formula, formula))
    atoms.calc = WaveCalculator(model=model)
    rng = np.random.default_rng(0)
    base = atoms.positions.copy()

    def call():
        atoms.positions = base + rng.normal(scale=0.01, size=base.shape)
        atoms.get_forces()

    return time_call(call, repeats, warmup=2)


def stability(model: str, formula: str, temperatures, seeds, steps: int, out: Path) -> list[dict]:
    from ase.build import molecule
    from ase.calculators.calculator import CalculationFailed, InputError
    from ase.io import read

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.md import run_md

    runs = []
    for temperature in temperatures:
        for seed in seeds:
            traj = out / f"{Path(model).name}_T{temperature:g}_s{seed}.traj"
            entry = {"temperature_K": temperature, "seed": seed}
            t0 = time.perf_counter()
            try:
                run_md(molecule(formula), WaveCalculator(model=model), ensemble="langevin",
                       temperature=temperature, steps=steps, seed=seed, trajectory=str(traj), progress=False,
                       log=None)
                entry.update(steps=steps, stopped=False)
            except (InputError, CalculationFailed) as exc:
                frames = read(traj, ":") if traj.exists() else []
                entry.update(steps=max(0, len(frames) - 1), stopped=True, reason=str(exc)[:200])
            entry["wall_s"] = round(time.perf_counter() - t0, 1)
            frames = read(traj, "200:") if traj.exists() else []
            entry["mean_temperature_K"] = (round(float(np.mean([a.get_temperature() for a in frames])), 1)
                                           if frames else None)
            runs.append(entry)
            print(f"    T {temperature:g} K seed {seed}: {entry['steps']} steps"
                  + (f", stopped: {entry['reason'][:100]}" if entry["stopped"] else ", completed")
                  + f" ({entry['wall_s']} s)", flush=True)
    return runs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="data/ethanol_pbe_def2svp.db")
    parser.add_argument("--model", nargs="+", required=True, metavar="LABEL=MODEL")
    parser.add_argument("--repeats", type=int, default=20, help="timed energy+forces calls")
    parser.add_argument("--md-steps", type=int, default=0, help="Langevin steps per run (0: no MD)")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 500.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--out", default="energy_paths_md", help="directory for the MD trajectories")
    parser.add_argument("--json", default=None)
    parser.add_argument("--density-functional", nargs="*", default=[], metavar="LABEL=JSON",
                        help="rows of design 2 from benchmarks/density_functional.py results (a learned functional "
                             "of P is not a calculator model, so it has its own script)")
    args = parser.parse_args(argv)

    from ase_wavecalc.dataset import read_dataset

    warnings.filterwarnings("ignore", message=".*semi-quantitative.*", category=UserWarning)
    dataset = Path(args.dataset)
    data = read_dataset(dataset, keys=("fock", "e_tot", "gradient"))
    info = machine_info()
    print(machine_line(info))
    results, rows = {}, []
    for spec in args.model:
        label, _, model = spec.partition("=")
        if not model:
            raise SystemExit(f"--model expects LABEL=MODEL, got {spec!r}")
        model = resolve_model(model)
        card = read_card(model)
        frames = test_frames(card, dataset)
        print(f"{label}: {model} ({(card.get('energy_path') or {}).get('name', 'hamiltonian')} energy path), "
              f"{len(frames)} test frames", flush=True)
        entry = {"model": model, "energy_path": card.get("energy_path"), "accuracy": accuracy(model, card, data, frames)}
        entry["speed"] = speed(model, args.repeats)
        if args.md_steps:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            formula = {"C2H6O": "CH3CH2OH", "H2O": "H2O"}.get(card["datasets"][0].get("formula"), "CH3CH2OH")
            entry["md"] = stability(model, formula, args.temperatures, args.seeds, args.md_steps, out)
        results[label] = entry
        acc = entry["accuracy"]
        md = entry.get("md")
        rows.append([label, f"{acc['energy_mae_mev']:.2f}", f"{acc['force_mae_mev_a']:.1f}",
                     f"{acc['fock_mae_uha']:.1f}" if "fock_mae_uha" in acc else "-",
                     f"{acc['eps_occ_mae_uha']:.0f}" if "eps_occ_mae_uha" in acc else "-",
                     f"{entry['speed']['median_s'] * 1e3:.1f}",
                     f"{sum(not r['stopped'] for r in md)}/{len(md)}" if md else "-",
                     f"{np.median([r['steps'] for r in md]):.0f}" if md else "-"])
    for spec in args.density_functional:
        label, _, path = spec.partition("=")
        res = json.loads(Path(path).read_text())
        acc, md = res["test"], res.get("md") or []
        results[label] = {"density_functional": path, "accuracy": acc, "speed": {"median_s": res["ms_per_call"] / 1e3},
                          "md": md}
        rows.append([label, f"{acc['energy_mae_mev']:.2f}", f"{acc['force_mae_mev_a']:.1f}", "(frozen F)", "(frozen F)",
                     f"{res['ms_per_call']:.1f}",
                     f"{sum(r['stopped'] == 'completed' for r in md)}/{len(md)}" if md else "-", f"{np.median([r['steps'] for r in md]):.0f}" if md else "-"])
    print()
    print(table(["path", "E MAE (meV)", "F MAE (meV/A)", "Fock MAE (uHa)", "eps MAE (uHa)", "ms/call",
                 f"MD runs done ({args.md_steps} steps)", "median steps"], rows))
    finish_machine_info(info)
    path = write_result(f"energy_paths_{dataset.stem}", {"benchmark": "energy_paths", "machine": info,
                                                         "dataset": str(dataset), "md_steps": args.md_steps,
                                                         "models": results}, args.json)
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
