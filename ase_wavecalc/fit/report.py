"""Phase "final" of a fit: what the model is worth, measured through the public API, written beside it.

* test errors on the held-out test frames through ``WaveCalculator``: energy, forces, F, occupied orbital
  energies (against the stored PySCF references), written into the model card's ``test_metrics``;
* Langevin MD stability (runs per temperature and seed, bonds intact);
* time per energy+forces call of the model, GFN2-xTB and PySCF, measured in the same run;
* ``report.md`` and PNGs (learning curves of every training run, parity plots of E, forces and F, orbital-
  energy errors) in the model directory; the card records the fit (command, recipe, phases, frames, hours);
* the labelled datasets as npz parts (``wavecalc export-npz``) in the fit's data folder.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["test_errors", "md_stability", "call_times", "final_report"]


def _error_metrics(e_ref, e_mod, f_ref, f_mod, fock_err, eps_err) -> dict:
    """MAEs of one set of frames: energies (eV, arrays (n,)), forces (eV/A, (n, atoms, 3)) and the lists of
    per-frame |F error| and |occupied eps error| arrays (Hartree)."""
    de = np.asarray(e_mod) - np.asarray(e_ref)
    df = np.asarray(f_mod) - np.asarray(f_ref)
    fock = np.concatenate(fock_err) if fock_err else np.array([np.nan])
    eps = np.concatenate(eps_err) if eps_err else np.array([np.nan])
    return {"n_frames": int(len(de)),
            "energy_mae_mev": float(np.mean(np.abs(de)) * 1e3),
            "energy_mae_mev_mean_removed": float(np.mean(np.abs(de - np.mean(de))) * 1e3),
            "force_mae_mev_a": float(np.mean(np.abs(df)) * 1e3),
            "force_rmse_mev_a": float(np.sqrt(np.mean(df ** 2)) * 1e3),
            "fock_mae_uha": float(np.mean(fock) * 1e6),
            "occ_eps_mae_uha": float(np.mean(eps) * 1e6),
            "occ_eps_median_uha": float(np.median(eps) * 1e6)}


def test_errors(model_dir, test_db, groups=None) -> dict:
    """Errors of the model through ``WaveCalculator`` on every converged frame of ``test_db``: the metrics of
    all frames, those of each group (key "by_group"; ``groups`` gives one label per row of ``test_db``, e.g.
    the test trajectory's temperature "md300"), and the raw pairs for the parity plots (key "pairs")."""
    from ase import Atoms
    from ase.calculators.calculator import InputError

    from ..calculator import WaveCalculator
    from ..dataset import read_dataset
    from ..units import BOHR, HARTREE
    from ..validation import n_occupied

    data = read_dataset(test_db, keys=("e_tot", "gradient", "fock", "mo_energy"))
    calc = WaveCalculator(model=str(model_dir))
    n_occ = None
    frames = []           # per frame: group, e_ref, e_mod, f_ref, f_mod, |F error| or None, |eps error| or None
    refused = {}
    index = data["frame"]     # the row's position in the file's geometries (the order of ``groups``)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in range(len(data["e_tot"])):
            row = int(index[k])
            group = str(groups[row]) if groups is not None and row < len(groups) else "all"
            atoms = Atoms(numbers=data["numbers"], positions=data["positions_bohr"][k] * BOHR)
            atoms.calc = calc
            try:
                e, f = atoms.get_potential_energy(), atoms.get_forces()
            except InputError:        # the model refuses this geometry (outside its training domain)
                refused.setdefault(group, {"energy": 0, "orbitals": 0})["energy"] += 1
                continue
            rec = [group, float(data["e_tot"][k]) * HARTREE, e, -np.asarray(data["gradient"][k]) * HARTREE / BOHR,
                   f, None, None]
            try:
                fock = calc.get_hamiltonian()
                eps = np.sort(calc.get_eigenvalues()) / HARTREE
            except InputError:        # e.g. a predicted HOMO-LUMO gap far below training: F is not trusted
                refused.setdefault(group, {"energy": 0, "orbitals": 0})["orbitals"] += 1
            else:
                if n_occ is None:
                    n_occ = n_occupied(data["numbers"], int(calc.provider.charge))
                rec[5] = np.abs(fock - data["fock"][k]).ravel()
                rec[6] = np.abs(eps[:n_occ] - np.sort(data["mo_energy"][k])[:n_occ])
            frames.append(rec)
    if not frames:
        raise RuntimeError(f"the model refused every test frame of {test_db}")

    def metrics(sel):
        return _error_metrics([r[1] for r in sel], [r[2] for r in sel], [r[3] for r in sel], [r[4] for r in sel],
                              [r[5] for r in sel if r[5] is not None], [r[6] for r in sel if r[6] is not None])

    out = metrics(frames)
    total = {"energy": sum(v["energy"] for v in refused.values()),
             "orbitals": sum(v["orbitals"] for v in refused.values())}
    out["refused_frames"] = total
    names = sorted({r[0] for r in frames} | set(refused))
    if names != ["all"]:
        out["by_group"] = {}
        for g in names:
            sel = [r for r in frames if r[0] == g]
            m = metrics(sel) if sel else {"n_frames": 0}
            m["refused_frames"] = refused.get(g, {"energy": 0, "orbitals": 0})
            out["by_group"][g] = m
    out["via"] = "WaveCalculator"
    out["pairs"] = {"energy": [np.array([r[1] for r in frames]), np.array([r[2] for r in frames])],
                    "forces": [np.array([r[3] for r in frames]), np.array([r[4] for r in frames])],
                    "fock_err": np.concatenate([r[5] for r in frames if r[5] is not None] or [np.array([np.nan])]),
                    "eps_err": np.concatenate([r[6] for r in frames if r[6] is not None] or [np.array([np.nan])])}
    return out


def md_stability(model_dir, start_atoms, temperatures, seeds, steps: int, out_dir: Path, log=print) -> list[dict]:
    """Langevin MD (0.5 fs, friction 0.01/fs) per temperature and seed; a run counts as completed when it ran
    all steps and its molecule never changed for 100 steps in a row (``domain.first_lasting_bond_change`` over
    the frames written every 50 steps: each hydrogen on its nearest atom, like atoms exchangeable, so a proton
    moved to an equivalent site or shared by two is the same molecule)."""
    from ase.calculators.calculator import CalculationFailed, InputError
    from ase.io import read

    from ..calculator import WaveCalculator
    from ..domain import first_lasting_bond_change
    from ..md import run_md

    runs = []
    for t in temperatures:
        for seed in seeds:
            traj = Path(out_dir) / f"stability_T{t:g}_s{seed}.traj"
            entry = {"temperature_K": float(t), "seed": int(seed), "steps_asked": int(steps)}
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    run_md(start_atoms.copy(), WaveCalculator(model=str(model_dir)), ensemble="langevin",
                           temperature=float(t), steps=int(steps), seed=int(seed), trajectory=str(traj),
                           interval=50, log=None, progress=False)
                    entry.update(stopped=False, reason="")
                except (InputError, CalculationFailed) as exc:
                    entry.update(stopped=True, reason=str(exc).splitlines()[0][:200])
            frames = read(traj, ":") if traj.exists() else []
            path = [start_atoms.positions] + [a.positions for a in frames]
            intact = first_lasting_bond_change(start_atoms.numbers, path, hold=2, scale=1.25) is None
            entry.update(frames_written=len(frames), bonds_intact=bool(intact),
                         completed=bool(not entry["stopped"] and intact), wall_s=round(time.perf_counter() - t0, 1))
            log(f"  {t:g} K seed {seed}: " + ("completed" if entry["completed"] else f"stopped: {entry['reason'] or 'bonds changed'}"))
            runs.append(entry)
    return runs


def call_times(model_dir, atoms, method: str, basis: str, charge: int, calls: int = 20) -> dict:
    """Seconds per energy+forces call (median) of the model, GFN2-xTB (if tblite is installed) and PySCF
    (one call), each on a fresh geometry displaced by 0.01 A so that nothing is cached."""
    from ..calculator import WaveCalculator

    rng = np.random.default_rng(0)

    def timed(calc, n):
        out = []
        for _ in range(n):
            a = atoms.copy()
            a.positions += rng.normal(scale=0.01, size=a.positions.shape)
            a.calc = calc
            t0 = time.perf_counter()
            a.get_forces()
            out.append(time.perf_counter() - t0)
        return float(np.median(out))

    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = WaveCalculator(model=str(model_dir))
        timed(model, 2)
        res["model_s"] = timed(model, calls)
        try:
            from tblite.ase import TBLite
            xtb = TBLite(method="GFN2-xTB", charge=charge, verbosity=0)
            timed(xtb, 2)
            res["gfn2_xtb_s"] = timed(xtb, calls)
        except ImportError:
            res["gfn2_xtb_s"] = None
        res["pyscf_s"] = timed(WaveCalculator(method=method, basis=basis, charge=charge), 1)
    return res


def _plots(out: Path, pairs: dict, run_dirs) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    e_ref, e_mod = pairs["energy"]
    ax[0].plot((e_ref - e_ref.mean()) * 1e3, (e_mod - e_ref.mean()) * 1e3, ".", ms=3)
    ax[0].set(xlabel="PySCF energy - mean (meV)", ylabel="model (meV)", title="energy")
    f_ref, f_mod = pairs["forces"]
    ax[1].plot(f_ref.ravel(), f_mod.ravel(), ".", ms=2)
    ax[1].set(xlabel="PySCF force (eV/A)", ylabel="model (eV/A)", title="forces")
    for key, bins, label in (("fock_err", 60, "F elements"), ("eps_err", 30, "occupied eps")):
        err = np.asarray(pairs[key])
        err = err[np.isfinite(err)]
        if len(err):         # (empty where the model refused every test frame's orbitals)
            ax[2].hist(np.log10(err * 1e6 + 1e-3), bins=bins, alpha=0.7, label=label)
    ax[2].set(xlabel="log10 |error| (uHa)", ylabel="count", title="F and orbital energies")
    ax[2].legend()
    for a in ax[:2]:
        lo, hi = a.get_xlim()
        a.plot([lo, hi], [lo, hi], "k-", lw=0.5)
    fig.tight_layout()
    fig.savefig(out / "parity.png", dpi=110)
    plt.close(fig)
    files.append("parity.png")
    for run in run_dirs:
        png = Path(run) / "learning_curve.png"
        if png.is_file():
            name = f"learning_curve_{Path(run).name}.png"
            shutil.copyfile(png, out / name)
            files.append(name)
    return files


def label_costs(db_paths) -> list[list]:
    """Rows (start, frames, mean seconds, mean SCF cycles) of the labelled frames by SCF start: PySCF's guess
    or the Fock network's density (``guess`` key of each row; frames from before it was recorded count as
    PySCF's)."""
    from ..dataset import connect

    by = {}
    for path in db_paths:
        for row in connect(path).select(converged=True, include_data=False):
            g = row.get("guess", "minao")
            by.setdefault(g, []).append((float(row.get("seconds", np.nan)), float(row.get("scf_cycles", np.nan))))
    names = {"minao": "PySCF's guess (minao)", "given": "the Fock network's density"}
    return [[names.get(g, g), len(v), f"{np.nanmean([a for a, _ in v]):.1f}", f"{np.nanmean([b for _, b in v]):.1f}"]
            for g, v in sorted(by.items())]


def _test_rows(t: dict) -> list[list]:
    """Rows of the test table: one per test trajectory (e.g. "MD at 300 K") when there are several, then all."""
    def row(name, m):
        r = m.get("refused_frames", {"energy": 0, "orbitals": 0})
        if not m.get("n_frames"):
            return [name, 0, f"{r['energy']} / {r['orbitals']}"] + ["-"] * 6
        return [name, m["n_frames"], f"{r['energy']} / {r['orbitals']}", f"{m['energy_mae_mev']:.2f}",
                f"{m['energy_mae_mev_mean_removed']:.2f}", f"{m['force_mae_mev_a']:.1f}", f"{m['fock_mae_uha']:.0f}",
                f"{m['occ_eps_mae_uha']:.0f}", f"{m.get('occ_eps_median_uha', float('nan')):.0f}"]

    rows = [row(f"MD at {g[2:]} K" if g.startswith("md") else g, m) for g, m in t.get("by_group", {}).items()]
    return rows + [row("all", t)]


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def final_report(fit) -> dict:
    """Test, stability, timing, report, card, npz parts (each step recorded, so a resumed fit skips it)."""
    from ase import Atoms

    from ..npz_export import export_npz

    st, out, work = fit.st, fit.out, fit.work
    rec = fit.recipe["final"]
    cand = np.load(work / "candidates.npz")
    start = Atoms(numbers=cand["numbers"], positions=cand["start"])
    res = st.get("final_results", {})
    if "test" not in res:
        fit.log("[final] test frames through WaveCalculator")
        groups = cand["test_source"] if "test_source" in cand else None
        t = test_errors(out, work / "test.db", groups=groups)
        pairs = t.pop("pairs")
        np.savez_compressed(work / "test_pairs.npz", e_ref=pairs["energy"][0], e_mod=pairs["energy"][1],
                            f_ref=pairs["forces"][0], f_mod=pairs["forces"][1], fock_err=pairs["fock_err"],
                            eps_err=pairs["eps_err"])
        res["test"] = t
        st.set("final_results", res)
    if "stability" not in res:
        fit.log("[final] Langevin MD stability")
        (work / "md").mkdir(exist_ok=True)
        res["stability"] = md_stability(out, start, rec["stability_temperatures"], rec["stability_seeds"],
                                        int(rec["stability_steps"]), work / "md", log=lambda s: fit.log("[final]" + s))
        st.set("final_results", res)
    if "timing" not in res:
        fit.log("[final] time per call against GFN2-xTB and PySCF")
        res["timing"] = call_times(out, start, fit.req["method"], fit.req["basis"], int(fit.req["charge"]),
                                   int(rec["timing_calls"]))
        st.set("final_results", res)
    if not st.get("npz_exported"):
        for name in fit.train_sets() + ["test.db"]:
            target = fit.data_out / Path(name).stem
            if target.exists():
                shutil.rmtree(target)
            export_npz(work / name, target, progress=False, compact=True)
        st.set("npz_exported", True)
    p = np.load(work / "test_pairs.npz")
    runs = sorted((work / "runs").iterdir())
    pngs = _plots(out, {"energy": [p["e_ref"], p["e_mod"]], "forces": [p["f_ref"], p["f_mod"]],
                        "fock_err": p["fock_err"], "eps_err": p["eps_err"]}, runs)
    t, tm = res["test"], res["timing"]
    stab = res["stability"]
    completed = sum(r["completed"] for r in stab)
    frames = {name: fit.labelled(name) for name in fit.train_sets() + ["test.db"]}
    phase_s = dict(st.get("phase_seconds", {}))
    if "final" not in phase_s:        # this phase, up to the report (its seconds are recorded when it ends)
        phase_s["final"] = round(max(0.0, st.elapsed() - sum(phase_s.values())), 1)
    card_path = out / "model.json"
    card = json.loads(card_path.read_text())
    card["name"] = fit.req.get("name") or card.get("name")      # --name (export names it after the folder)
    card["test_metrics"] = {k: v for k, v in t.items()}
    card["test_metrics"]["md_stability"] = f"{completed} of {len(stab)}"
    card["fit"] = {"command": fit.req.get("command"), "molecule": fit.req.get("molecule"),
                   "recipe": st.get("recipe_text"), "budget_s": fit.req["budget_s"], "data_out": str(fit.data_out),
                   "elapsed_s": round(st.elapsed(), 1), "phase_seconds": phase_s, "labelled_frames": frames,
                   "start": {"numbers": [int(z) for z in cand["numbers"]],      # the xTB minimum sampling began
                             "positions_angstrom": np.round(cand["start"], 8).tolist()},   # from (MD's start)
                   "active_rounds": st.get("active_rounds", []), "stability": stab, "timing": tm,
                   "records": st.get("records", {})}
    tmp = card_path.with_name(card_path.name + ".tmp")      # whole, then renamed: a kill never leaves half a card
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)
    ratio = (f"{tm['model_s'] / tm['gfn2_xtb_s']:.1f}x" if tm.get("gfn2_xtb_s") else "n/a")
    lines = [f"# `wavecalc fit` report: {card.get('name')}", "",
             f"Molecule {fit.req.get('molecule')} ({Atoms(numbers=cand['numbers']).get_chemical_formula()}), "
             f"{fit.req['method'].upper()}/{fit.req['basis']}, charge {fit.req['charge']}; budget "
             f"{fit.req['budget_s'] / 3600:.2f} h, used {st.elapsed() / 3600:.2f} h.", "",
             f"Command: `{fit.req.get('command')}`", "",
             "## Test frames (held out, own MD trajectories; through WaveCalculator)", "",
             _table(["test frames", "scored", "refused (E / orbitals)", "energy MAE (meV)", "same, mean removed",
                     "force MAE (meV/A)", "F MAE (uHa)", "occ. eps MAE (uHa)", "occ. eps median (uHa)"],
                    _test_rows(t)),
             "", "## Langevin MD stability (0.5 fs, friction 0.01/fs)", "",
             _table(["T (K)", "seed", "steps", "outcome", "wall (s)"],
                    [[f"{r['temperature_K']:g}", r["seed"], r["steps_asked"],
                      "completed" if r["completed"] else f"stopped: {r['reason'][:80] or 'bonds changed'}",
                      r["wall_s"]] for r in stab]),
             "", "## Time per energy+forces call (same run, this machine)", "",
             _table(["model", "GFN2-xTB", "PySCF", "model / xTB", "PySCF / model"],
                    [[f"{tm['model_s'] * 1e3:.1f} ms",
                      f"{tm['gfn2_xtb_s'] * 1e3:.2f} ms" if tm.get("gfn2_xtb_s") else "n/a",
                      f"{tm['pyscf_s']:.1f} s", ratio, f"{tm['pyscf_s'] / tm['model_s']:.0f}x"]]),
             "", "## Where the hours went", "",
             _table(["phase", "wall (min)"], [[k, f"{v / 60:.1f}"] for k, v in phase_s.items()]),
             "", "Labelled frames: " + ", ".join(f"{k} {v}" for k, v in frames.items()) + ".", "",
             "Labels (one core each; seconds include the gradient):", "",
             _table(["SCF start", "frames", "s per frame", "SCF cycles"],
                    label_costs([work / n for n in fit.train_sets() + ["test.db"]])), ""]
    lines += [f"![{png}]({png})" for png in pngs]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    for g, m in t.get("by_group", {}).items():
        if m.get("n_frames"):
            fit.log(f"[final]   {g}: forces {m['force_mae_mev_a']:.1f} meV/A, energy {m['energy_mae_mev']:.2f} meV, "
                    f"F {m['fock_mae_uha']:.0f} uHa ({m['n_frames']} frames)")
    fit.log(f"[final] {out / 'report.md'}: test forces {t['force_mae_mev_a']:.1f} meV/A, energy "
            f"{t['energy_mae_mev']:.2f} meV, F {t['fock_mae_uha']:.0f} uHa; MD {completed} of {len(stab)} completed")
    return res
