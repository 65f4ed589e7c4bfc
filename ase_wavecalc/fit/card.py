"""What a `wavecalc fit` model's card records about its fit, read back: the geometry its sampling started from
and the folder its labelled frames were written to (``--data-out``).

The fit section is written by ``report.final_report`` (``card["fit"]``).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["fit_start", "dataset_folder"]


def fit_start(card: dict):
    """``ase.Atoms`` (Angstrom) of the xTB minimum a fit's sampling began from; None for other models."""
    from ase import Atoms

    start = card.get("fit", {}).get("start")
    if not start:
        return None
    return Atoms(numbers=start["numbers"], positions=start["positions_angstrom"])


def dataset_folder(card: dict, name: str, root) -> Path:
    """Folder of the committed npz parts of the card's dataset ``name`` (e.g. "pool.db"), under ``root``:
    ``<root>/data/<stem>`` for staged models, ``<root>/<--data-out>/<stem>`` for a fit's."""
    fit = card.get("fit")
    base = Path(root) / fit["data_out"] if fit and fit.get("data_out") else Path(root) / "data"
    return base / Path(name).stem
