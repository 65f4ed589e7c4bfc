"""Least-squares refit of the per-element energy offsets e0 of a trained energy model.

The energy E = E_nn + 1/2 Tr[P (F + h_core + Delta h)] + sum_A e0[Z_A] is linear in the offsets e0, so
once the rest of the network is fixed the best offsets have a closed form. Stochastic training leaves
them noisy: Adam moves every parameter by ~lr per step whatever its gradient's size, so with lr 2e-4
the offsets (tens of Hartree) jitter by ~5 meV from step to step, and that jitter is the largest part of
a small-molecule energy error. ``refit_energy_offsets`` evaluates the model on training frames in
float64 and adds the minimum-norm correction

    delta = pinv(N) (E_ref - E_model),   N[i, k] = number of atoms of element k in frame i,

which removes the mean residual of every composition (the only part of e0 a single-composition
dataset determines) and changes nothing else: forces are untouched. Only training frames are used, so
test metrics stay held-out.

The fit ignores outlier frames (:func:`inlier_frames`): with active-learning data, a few frames just past
the model's domain have errors of eV (a virtual level diving into the gap), and in a plain mean 1% of
such frames shift every other energy by tens of meV.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["inlier_frames", "offset_correction", "refit_energy_offsets"]

# residuals further than this many robust standard deviations (1.4826 x MAD) from the median are outliers
OUTLIER_MADS = 5.0


def offset_correction(counts: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Least-squares per-element shifts (Hartree) for element counts (frames, elements) and residuals
    (frames,), with the smallest norm. Directions the compositions do not determine (one molecule: every
    row the same) are left at zero: singular values below 1e-8 of the largest are dropped (numpy's default
    cut, 1e-15, kept round-off ones and returned shifts of 1e9 Hartree that cancel only in exact arithmetic)."""
    return np.linalg.pinv(np.asarray(counts, dtype=float), rcond=1e-8) @ np.asarray(residuals, dtype=float)


def inlier_frames(counts: np.ndarray, residuals: np.ndarray, n_mads: float = OUTLIER_MADS) -> np.ndarray:
    """Boolean mask (frames,) of the frames to fit the offsets on: finite residuals (Hartree) whose
    deviation from a first least-squares fit is within ``n_mads`` robust standard deviations
    (1.4826 x the median absolute deviation) of the median deviation. Falls back to all finite frames
    when the deviations have no spread (MAD zero)."""
    counts, residuals = np.asarray(counts, dtype=float), np.asarray(residuals, dtype=float)
    keep = np.isfinite(residuals)
    if keep.sum() < 2:
        return keep
    dev = residuals[keep] - counts[keep] @ offset_correction(counts[keep], residuals[keep])
    center = np.median(dev)
    scale = 1.4826 * np.median(np.abs(dev - center))
    if scale == 0:
        return keep
    out = keep.copy()
    out[np.flatnonzero(keep)] = np.abs(dev - center) <= n_mads * scale
    return out


def refit_energy_offsets(model: torch.nn.Module, datasets: Sequence[tuple], charge: int = 0,
                         labels: Sequence[str] | None = None) -> dict:
    """Shift ``model.element_energy_offsets`` in place by the least-squares correction over the inlier
    frames (:func:`inlier_frames`); returns a summary.

    datasets: ``(path, frame_ids)`` pairs (training frames); ``labels``: per dataset, "reference" or
    "high" (its high-level labels). The model runs in float64 through
    :class:`~ase_wavecalc.providers.ModelProvider`, the calculator's path. Summary: frames evaluated
    and those left out as outliers, the correction per element (Hartree), and the residual mean and RMS
    over the inliers before and after (meV).
    """
    from ..units import HARTREE
    from .metrics import model_energy_predictions

    if not hasattr(model, "element_energy_offsets"):
        raise ValueError("the model has no per-element energy offsets (element_energy_offsets)")
    column = {int(z): k for k, z in enumerate(model.config["elements"])}
    counts, residuals = [], []
    for k, (path, frame_ids) in enumerate(datasets):
        pred = model_energy_predictions(model, path, frame_ids, charge=charge, gradient=False,
                                        labels="reference" if labels is None else labels[k])
        n = np.zeros(len(column))
        for z in pred["numbers"].reshape(-1):
            n[column[int(z)]] += 1
        residuals.extend(pred["e_ref"] - pred["energy"])
        counts.extend([n] * len(frame_ids))
    if not residuals:
        raise ValueError("no frames to refit the energy offsets on")
    a, r = np.asarray(counts, dtype=float), np.asarray(residuals, dtype=float)
    keep = inlier_frames(a, r)
    if not keep.any():
        raise ValueError("no finite energy residuals to refit the energy offsets on")
    outliers = int(len(r) - keep.sum())
    a, r = a[keep], r[keep]
    delta = offset_correction(a, r)
    after = r - a @ delta
    with torch.no_grad():
        offsets = model.element_energy_offsets
        offsets.add_(torch.as_tensor(delta, dtype=offsets.dtype))
    return {"frames": int(len(r) + outliers), "outliers": outliers,
            "delta_hartree": {str(z): float(delta[k]) for z, k in column.items()},
            "residual_mean_mev_before": float(r.mean() * HARTREE * 1e3),
            "residual_rms_mev_before": float(np.sqrt((r ** 2).mean()) * HARTREE * 1e3),
            "residual_mean_mev_after": float(after.mean() * HARTREE * 1e3),
            "residual_rms_mev_after": float(np.sqrt((after ** 2).mean()) * HARTREE * 1e3)}
