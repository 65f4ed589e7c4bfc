"""Active learning for a fit: Langevin MD on the committee model, and the frames worth labelling.

A frame is selected where the committee's energy spread is in the top ``spread_quantile`` of its run or above
the model card's warning threshold (the most uncertain first), and, for a run the model stopped (a geometry
outside its training domain), the geometry it refused and the frames just before it. Frames come out at least
``select_every`` steps apart (the refused geometry excepted).
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["explore"]


def explore(model_dir, start_atoms, temperatures, steps: int, friction: float, select_every: int,
            max_frames: int, spread_quantile: float, seed: int = 0, deadline=None, log=print) -> dict:
    """Run one Langevin MD per temperature on the model in ``model_dir``; returns {"frames": [Atoms],
    "runs": [{temperature_K, steps, stopped, reason}]}. ``deadline``: a callable -> True when time is up."""
    from ase.calculators.calculator import CalculationFailed, InputError

    from ..calculator import WaveCalculator
    from ..sampling import langevin, start_velocities

    frames, runs = [], []
    for k, t in enumerate(temperatures):
        atoms = start_atoms.copy()
        calc = WaveCalculator(model=str(model_dir))
        atoms.calc = calc
        rng = np.random.default_rng(seed * 100 + k)
        start_velocities(atoms, t, rng)
        dyn = langevin(atoms, 0.5, t, friction, rng)
        seen, spreads = [], []
        stopped, reason, done = False, "", 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                for step in range(0, steps, select_every):
                    if deadline is not None and deadline():
                        break
                    dyn.run(select_every)
                    done = step + select_every
                    std = calc.results.get("energy_std", atoms.info.get("energy_std", np.nan))   # eV
                    a = atoms.copy()
                    a.calc = None
                    seen.append(a)
                    spreads.append(float(std))
            except (InputError, CalculationFailed) as exc:
                stopped, reason = True, str(exc).splitlines()[0][:160]
                refused = atoms.copy()      # the geometry the model refused (a bond pattern or distance it
                refused.calc = None         # never saw, e.g. a proton in flight): what most needs a label
                seen.append(refused)
                spreads.append(np.nan)
        runs.append({"temperature_K": float(t), "steps": int(done), "stopped": stopped, "reason": reason})
        log(f"  MD at {t:g} K: {done} steps" + (f", stopped: {reason}" if stopped else ""))
        spreads = np.asarray(spreads)
        card = getattr(calc.provider, "card", {}) or {}
        threshold = float((card.get("committee") or {}).get("energy_std_warning_mev") or 0.0) / 1000.0   # eV
        # first the refused geometry and the frames just before it, then the least certain ones (the run's top quantile, and any
        # frame above the card's warning threshold), most uncertain first, up to the cap
        picked = list(range(max(0, len(seen) - 4), len(seen))[::-1]) if stopped and seen else []
        if len(spreads) and np.isfinite(spreads).any():
            cut = np.nanquantile(spreads, spread_quantile)
            if threshold > 0:
                cut = min(cut, threshold)
            order = np.argsort(-np.nan_to_num(spreads, nan=-1.0))
            picked += [int(i) for i in order if spreads[i] >= cut and int(i) not in picked]
        picked = picked[: max(1, max_frames // max(1, len(temperatures)))]
        frames += [seen[i] for i in sorted(picked)]
    return {"frames": frames, "runs": runs}
