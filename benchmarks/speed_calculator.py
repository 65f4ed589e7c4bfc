"""One energy + forces call through ASE: WaveCalculator(model) vs PySCF PBE/def2-SVP vs GFN2-xTB.

Per molecule (``ase.build.molecule`` geometry), each timed call is ``calc.calculate(atoms, ["energy",
"forces"], all_changes)``, i.e. a full recomputation:

* model: ``WaveCalculator(model=...)`` (float64, and float32 for the network with ``--float32``):
  network forward, PySCF one-electron integrals, eigenproblem, energy, autograd gradient (network,
  integral derivatives, density response). The model is loaded once, before timing.
* PySCF: a fresh ``WaveCalculator(method="pbe", basis="def2-svp")`` for every call (SCF from the default
  guess + analytic gradient; no density carried over from a previous call).
* GFN2-xTB: a fresh ``tblite.ase.TBLite(method="GFN2-xTB")`` for every call (no wavefunction restart).

Ratios: PySCF / model (goal for ethanol: >= 100) and model / GFN2-xTB (goal: <= 20).
Also the model's energy-only call, to show the price of the forces.

    python benchmarks/speed_calculator.py
    python benchmarks/speed_calculator.py --model /tmp/standin-model --repeats 3 --pyscf-repeats 1

Writes benchmarks/results/speed_calculator.json (``--json`` to change).
"""
from __future__ import annotations

import argparse
import sys

from ase.calculators.calculator import PropertyNotImplementedError

from _common import (DEFAULT_MODELS, MOLECULES, finish_machine_info, machine_info, machine_line, ms,
                     resolve_model, table, time_call, write_result)

GOALS = {"pyscf_over_model_min": 100.0, "model_over_xtb_max": 20.0}


def model_calc(spec, dtype):
    from ase.calculators.calculator import InputError

    from ase_wavecalc import WaveCalculator

    if dtype == "float64":
        return WaveCalculator(model=spec)
    try:
        return WaveCalculator(model=spec, dtype=dtype)
    except InputError as exc:   # a calculator without the dtype parameter: pass the provider
        if "dtype" not in str(exc):
            raise
        from ase_wavecalc.providers import ModelProvider

        return WaveCalculator(provider=ModelProvider(spec, dtype=dtype))


def profile_call(factory, atoms, top):
    """cProfile of a few model energy+forces calls (after warm-up): [(function, calls, own s, cumulative s)]."""
    import cProfile
    import pstats

    from ase.calculators.calculator import all_changes

    calc = factory()
    calc.calculate(atoms, ["energy", "forces"], all_changes)
    prof = cProfile.Profile()
    n = 5
    prof.enable()
    for _ in range(n):
        calc.calculate(atoms, ["energy", "forces"], all_changes)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        rows.append({"function": f"{func} ({file.split('site-packages/')[-1].split('/work/main/')[-1]}:{line})",
                     "calls_per_call": ncalls / n, "own_ms": 1e3 * tottime / n, "cumulative_ms": 1e3 * cumtime / n})
    rows.sort(key=lambda r: -r["own_ms"])
    total = sum(r["own_ms"] for r in rows)
    print(f"\nprofile of one model energy+forces call ({total:.1f} ms under cProfile), top by own time:")
    print(table(["function", "calls", "own ms", "cum ms"],
                [[r["function"][:90], f"{r['calls_per_call']:.0f}", f"{r['own_ms']:.2f}", f"{r['cumulative_ms']:.2f}"]
                 for r in rows[:top]]))
    return {"total_ms": total, "top": rows[:top]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--molecules", nargs="+", choices=sorted(MOLECULES), default=["water", "ethanol"])
    parser.add_argument("--model", default=None, help="one model (name or directory) for every molecule; "
                                                      "default: each molecule's shipped model")
    parser.add_argument("--float32", action="store_true", help="also time the network in float32")
    parser.add_argument("--baseline", default=None, help="an MLIP baseline model (name or directory, same "
                        "molecule) timed beside the model, e.g. the energy-only network of configs/ethanol_mlip_baseline.toml")
    parser.add_argument("--repeats", type=int, default=10, help="timed model and xTB calls per molecule")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pyscf-repeats", type=int, default=3)
    parser.add_argument("--pyscf-warmup", type=int, default=1)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile one model energy+forces call per molecule: top functions by own time")
    parser.add_argument("--top", type=int, default=15, help="functions listed with --profile")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/speed_calculator.json)")
    args = parser.parse_args(argv)

    from ase.build import molecule
    from ase.calculators.calculator import all_changes

    from ase_wavecalc import WaveCalculator

    try:
        from tblite.ase import TBLite
    except ImportError:
        TBLite = None
        print("tblite is not installed: no GFN2-xTB column (pip install .[xtb])", file=sys.stderr)

    info = machine_info()
    print(machine_line(info))
    results = {"benchmark": "speed_calculator", "machine": info, "goals": GOALS, "cases": []}
    rows = []
    for mol_name in args.molecules:
        spec = resolve_model(args.model or DEFAULT_MODELS[mol_name])
        atoms = molecule(MOLECULES[mol_name])
        case = {"molecule": mol_name, "formula": atoms.get_chemical_formula(), "model": spec}

        moves = iter(range(10**9))

        def energy_forces(calc_factory):
            def call():
                # a new geometry every call (1e-6 A steps): providers cache the last geometry's result
                atoms.positions[0, 0] += 1e-6 * (1 if next(moves) % 2 else -1)
                calc = calc_factory()
                calc.calculate(atoms, ["energy", "forces"], all_changes)
                return calc
            return call

        calc64 = model_calc(spec, "float64")
        try:
            calc64.provider.require_energy()
        except PropertyNotImplementedError:
            print(f"{mol_name}: {spec} predicts the Hamiltonian only (no energy or forces): skipped; time an "
                  f"energy model with --model (e.g. benchmarks/make_standin_model.py --full-size)", file=sys.stderr)
            continue
        timings = {}
        for dtype in ["float64", "float32"] if args.float32 else ["float64"]:
            calc = calc64 if dtype == "float64" else model_calc(spec, dtype)
            timings[f"model_{dtype}"] = time_call(energy_forces(lambda: calc), args.repeats, args.warmup)
            if dtype == "float64":
                def energy_only():
                    atoms.positions[0, 0] += 1e-6 * (1 if next(moves) % 2 else -1)
                    calc.calculate(atoms, ["energy"], all_changes)
                timings["model_float64_energy_only"] = time_call(energy_only, args.repeats, args.warmup)
        if args.baseline:
            base = model_calc(resolve_model(args.baseline), "float64")
            timings["baseline_mlip"] = time_call(energy_forces(lambda: base), args.repeats, args.warmup)
        if args.profile:
            case["profile"] = profile_call(lambda: model_calc(spec, "float64"), atoms, args.top)
        timings["pyscf"] = time_call(energy_forces(lambda: WaveCalculator(method="pbe", basis="def2-svp")),
                                     args.pyscf_repeats, args.pyscf_warmup)
        if TBLite is not None:
            timings["gfn2_xtb"] = time_call(energy_forces(lambda: TBLite(method="GFN2-xTB", verbosity=0)),
                                            args.repeats, args.warmup)
        case["timings"] = timings
        t_model = timings["model_float64"]["median_s"]
        t_pyscf = timings["pyscf"]["median_s"]
        case["pyscf_over_model"] = t_pyscf / t_model
        case["forces_cost_factor"] = t_model / timings["model_float64_energy_only"]["median_s"]
        xtb = timings.get("gfn2_xtb")
        case["model_over_xtb"] = t_model / xtb["median_s"] if xtb else None
        if "model_float32" in timings:
            case["pyscf_over_model_float32"] = t_pyscf / timings["model_float32"]["median_s"]
            case["model_float32_over_xtb"] = (timings["model_float32"]["median_s"] / xtb["median_s"]) if xtb else None
        if mol_name == "ethanol":
            case["goal_pyscf_over_model_met"] = case["pyscf_over_model"] >= GOALS["pyscf_over_model_min"]
            if xtb:
                case["goal_model_over_xtb_met"] = case["model_over_xtb"] <= GOALS["model_over_xtb_max"]
        results["cases"].append(case)
        for key, label in (("model_float64", "model f64"), ("model_float32", "model f32"),
                           ("model_float64_energy_only", "model f64, energy only"),
                           ("baseline_mlip", "MLIP baseline f64"),
                           ("pyscf", "PySCF PBE/def2-SVP"), ("gfn2_xtb", "GFN2-xTB (tblite)")):
            if key not in timings:
                continue
            t = timings[key]["median_s"]
            rel_pyscf = f"{t_pyscf / t:.1f}x" if key != "pyscf" else "1"
            rel_xtb = f"{t / xtb['median_s']:.1f}" if xtb else "-"
            rows.append([mol_name, label, ms(t), f"{ms(timings[key]['min_s'])}-{ms(timings[key]['max_s'])}",
                         timings[key]["repeats"], rel_pyscf, rel_xtb])

    print()
    print(table(["molecule", "calculator (energy+forces)", "median ms", "min-max ms", "n", "PySCF/this",
                 "this/xTB"], rows))
    for case in results["cases"]:
        line = (f"{case['molecule']}: model is {case['pyscf_over_model']:.0f}x faster than PySCF"
                + (f", {case['model_over_xtb']:.1f}x slower than GFN2-xTB" if case["model_over_xtb"] else "")
                + f"; forces cost {case['forces_cost_factor']:.1f}x an energy-only call")
        if case["molecule"] == "ethanol":
            ok1 = "met" if case["goal_pyscf_over_model_met"] else "NOT met"
            ok2 = ("met" if case.get("goal_model_over_xtb_met") else "NOT met") if case["model_over_xtb"] else "n/a"
            line += f"  [goals: >=100x PySCF {ok1}; within 20x of xTB {ok2}]"
        print(line)
    finish_machine_info(info)
    path = write_result("speed_calculator", results, args.json)
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
