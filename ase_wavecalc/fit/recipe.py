"""The recipe of ``wavecalc fit``: one TOML file that says what every phase does and how the budget is shared.

The default recipe ships in the package (``ase_wavecalc/fit/recipes/default.toml``); a user recipe is merged
over it key by key, so it only needs the keys it changes. Unknown tables and keys are errors (a typo must not
silently fall back to a default). ``phase_end`` gives, for each phase in ``PHASES`` order, the fraction of the
budget spent when it ends.
"""
from __future__ import annotations

import copy
import difflib
from importlib import resources
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

__all__ = ["PHASES", "RecipeError", "load_recipe", "default_recipe_text", "phase_deadlines"]

#: the phases of a fit, in order
PHASES = ("sample", "label", "fock", "readout", "active", "final")


class RecipeError(ValueError):
    """A recipe that cannot be used as written."""


def default_recipe_text() -> str:
    return resources.files("ase_wavecalc.fit").joinpath("recipes/default.toml").read_text()


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            hint = difflib.get_close_matches(key, list(base), n=1)
            raise RecipeError(f"unknown recipe key {where}{key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        # tables that are training-config tables take any key (the trainer checks them)
        if isinstance(base[key], dict) and isinstance(value, dict) and key not in ("model", "loss", "optimizer",
                                                                                   "scheduler", "run"):
            out[key] = _merge(base[key], value, f"{where}{key}.")
        elif isinstance(base[key], dict) and isinstance(value, dict):
            out[key] = {**base[key], **value}
        else:
            out[key] = value
    return out


def load_recipe(path: str | Path | None = None) -> tuple[dict, str]:
    """(recipe dict, its TOML text as used): the default, or ``path`` merged over it."""
    text = default_recipe_text()
    recipe = tomllib.loads(text)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        user_text = path.read_text()
        try:
            user = tomllib.loads(user_text)
        except tomllib.TOMLDecodeError as exc:
            raise RecipeError(f"{path}: {exc}") from None
        recipe = _merge(recipe, user, "")
        text = f"# default recipe, with {path.name} merged over it:\n{user_text}"
    ends = recipe["budget"]["phase_end"]
    if list(ends) != list(PHASES):
        raise RecipeError(f"budget.phase_end must list the phases {PHASES} in this order, got {tuple(ends)}")
    values = [float(ends[p]) for p in PHASES]
    if any(b <= a for a, b in zip([0.0] + values, values)) or abs(values[-1] - 1.0) > 1e-9:
        raise RecipeError(f"budget.phase_end must increase from above 0 to exactly 1, got {values}")
    return recipe, text


def phase_deadlines(recipe: dict, budget_s: float) -> dict[str, float]:
    """Seconds of the fit's own clock at which each phase ends: ``budget.phase_end`` times the budget, except
    that the phase before "final" runs on until only ``final.reserve_min`` is left when that is later (the
    final phase's work, export, tests, MD check and timing, does not grow with the budget)."""
    ends = {p: float(recipe["budget"]["phase_end"][p]) * budget_s for p in PHASES}
    reserve = recipe.get("final", {}).get("reserve_min")
    if reserve is not None:
        before = PHASES[PHASES.index("final") - 1]
        ends[before] = max(ends[before], budget_s - 60.0 * float(reserve))
    return ends
