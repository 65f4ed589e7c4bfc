"""Hamiltonian-learning metrics (PhiSNet/QHNet conventions), pure torch functions in float64.

Every function takes a batch of predicted and reference matrices in PySCF AO order and returns one
value per structure; ``evaluate_model`` runs a model over dataset rows and averages over structures
(each structure weighs the same).

| key | meaning | unit |
|---|---|---|
| fock_mae_uha | mean |F_pred - F_ref| over all matrix elements | micro-Hartree |
| fock_diag_mae_uha | same, elements of the on-site (same-atom) blocks | micro-Hartree |
| fock_offdiag_mae_uha | same, elements of the blocks between two atoms | micro-Hartree |
| fock_max_abs_uha | largest |F_pred - F_ref| of any element of any structure | micro-Hartree |
| eps_occ_mae_uha | mean |eps_pred - eps_ref| over occupied orbitals of (F, S) | micro-Hartree |
| homo_mae_uha, lumo_mae_uha, gap_mae_uha | HOMO, LUMO energy and HOMO-LUMO gap errors | micro-Hartree |
| orbital_cosine | mean over occupied i of sqrt(sum_j (c_pred_i^T S c_ref_j)^2), j over the reference
  orbitals degenerate with i (= |c_pred_i^T S c_ref_i| for a non-degenerate level): sign- and
  degeneracy-invariant cosine similarity, 1 is perfect | 1 |
| occupied_subspace | ||C_pred,occ^T S C_ref,occ||_F^2 / n_occ: occupied-space overlap, 1 is perfect | 1 |
| dm_mae | mean |P_pred - P_ref|, P = 2 C_occ C_occ^T (invariant to occupied-orbital rotations) | e |
| dm_rel_fro | ||P_pred - P_ref||_F / ||P_ref||_F | 1 |
"""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

__all__ = ["UHA", "fock_errors", "orbital_errors", "evaluate_model", "format_metrics", "METRIC_UNITS",
           "mean_metrics", "model_energy_predictions", "energy_force_errors"]

UHA = 1e6  # micro-Hartree per Hartree

METRIC_UNITS = {
    "fock_mae_uha": "uHa", "fock_diag_mae_uha": "uHa", "fock_offdiag_mae_uha": "uHa",
    "fock_max_abs_uha": "uHa", "eps_occ_mae_uha": "uHa", "homo_mae_uha": "uHa", "lumo_mae_uha": "uHa",
    "gap_mae_uha": "uHa", "orbital_cosine": "", "occupied_subspace": "", "dm_mae": "e", "dm_rel_fro": "",
}


def fock_errors(pred: torch.Tensor, ref: torch.Tensor, ao_atom: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-structure F errors (Hartree): mean abs over all / on-site / inter-atom elements, max abs.

    pred, ref: (B, nao, nao); ao_atom: (nao,) atom index of each AO.
    """
    err = (pred.double() - ref.double()).abs()
    onsite = ao_atom[:, None] == ao_atom[None, :]
    out = {
        "fock_mae": err.mean(dim=(-2, -1)),
        "fock_diag_mae": err[:, onsite].mean(dim=-1),
        "fock_max_abs": err.amax(dim=(-2, -1)),
    }
    if (~onsite).any():
        out["fock_offdiag_mae"] = err[:, ~onsite].mean(dim=-1)
    return out


def _degenerate_groups(eps: torch.Tensor, tol: float) -> torch.Tensor:
    """(B, nao) label per level, equal labels for levels closer than ``tol`` (eps sorted ascending)."""
    gaps = eps[..., 1:] - eps[..., :-1] > tol
    zero = torch.zeros_like(gaps[..., :1])
    return torch.cat([zero, gaps], dim=-1).long().cumsum(dim=-1)


def orbital_errors(pred_fock: torch.Tensor, ref_fock: torch.Tensor, overlap: torch.Tensor, n_occ: int,
                   degeneracy_tol: float = 1e-5) -> dict[str, torch.Tensor]:
    """Per-structure errors of orbital energies (Hartree), orbitals and density matrix.

    Solves F C = S C eps for prediction and reference with the same (exact) S. ``degeneracy_tol``
    (Hartree): reference levels closer than this are treated as one eigenspace in ``orbital_cosine``.
    """
    from ..electronic import solve_fock

    s = overlap.double()
    eps_p, c_p = solve_fock(pred_fock.double(), s)
    eps_r, c_r = solve_fock(ref_fock.double(), s)
    n = n_occ
    out = {
        "eps_occ_mae": (eps_p[..., :n] - eps_r[..., :n]).abs().mean(dim=-1),
        "homo_mae": (eps_p[..., n - 1] - eps_r[..., n - 1]).abs(),
    }
    if eps_r.shape[-1] > n:
        out["lumo_mae"] = (eps_p[..., n] - eps_r[..., n]).abs()
        out["gap_mae"] = ((eps_p[..., n] - eps_p[..., n - 1]) - (eps_r[..., n] - eps_r[..., n - 1])).abs()
    # overlaps of predicted occupied orbitals with all reference orbitals: (B, n_occ, nao)
    o = c_p[..., :n].transpose(-1, -2) @ s @ c_r
    groups = _degenerate_groups(eps_r, degeneracy_tol)
    same = groups[..., :n, None] == groups[..., None, :]          # (B, n_occ, nao)
    out["orbital_cosine"] = (o.square() * same).sum(dim=-1).clamp(max=1.0).sqrt().mean(dim=-1)
    out["occupied_subspace"] = o[..., :n].square().sum(dim=(-2, -1)) / n
    p_p = 2.0 * c_p[..., :n] @ c_p[..., :n].transpose(-1, -2)
    p_r = 2.0 * c_r[..., :n] @ c_r[..., :n].transpose(-1, -2)
    dp = p_p - p_r
    out["dm_mae"] = dp.abs().mean(dim=(-2, -1))
    out["dm_rel_fro"] = torch.linalg.matrix_norm(dp) / torch.linalg.matrix_norm(p_r)
    return out


def _to_summary_key(name: str) -> str:
    return f"{name}_uha" if f"{name}_uha" in METRIC_UNITS else name


def mean_metrics(per_structure: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Average per-structure values (max for ``*_max_abs``); Hartree values become micro-Hartree keys."""
    out = {}
    for name, chunks in per_structure.items():
        values = torch.cat([c.reshape(-1) for c in chunks]).double()
        key = _to_summary_key(name)
        value = values.max() if name.endswith("_max_abs") else values.mean()
        out[key] = float(value) * (UHA if key.endswith("_uha") else 1.0)
    return out


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, tables: Sequence, row_sets: Sequence[np.ndarray],
                   batch_size: int = 16, orbitals: bool = True, degeneracy_tol: float = 1e-5) -> dict:
    """Metrics of ``model`` on the given rows of each ``data.FrameTable`` (see module docstring).

    Runs in the model's dtype, metrics in float64. ``orbitals=False`` skips the eigenproblems (F
    metrics only). Returns the summary dict plus ``n_structures`` and ``seconds`` (model + metrics).
    """
    from .data import epoch_plan
    from .losses import predicted_fock

    dtype = next(iter(model.parameters())).dtype
    was_training = model.training
    model.eval()
    collected: dict[str, list[torch.Tensor]] = {}
    n = 0
    t0 = time.perf_counter()
    try:
        for t, rows in epoch_plan(row_sets, batch_size, None):
            table = tables[t]
            batch = table.batch(rows, dtype=dtype, table=t)
            pred = predicted_fock(model(batch.numbers, batch.positions_bohr, batch.batch))
            idx = torch.as_tensor(rows)
            ref = table.fock[idx]  # float64 reference, not the batch's (maybe float32) copy
            parts = fock_errors(pred, ref, table.ao_atom)
            if orbitals:
                parts.update(orbital_errors(pred, ref, table.overlap[idx], table.n_occ, degeneracy_tol))
            for k, v in parts.items():
                collected.setdefault(k, []).append(v.detach().cpu())
            n += batch.n_structures
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("no structures to evaluate")
    summary = mean_metrics(collected)
    summary["n_structures"] = n
    summary["seconds"] = time.perf_counter() - t0
    return summary


_LABELS = {
    "fock_mae_uha": "F MAE, all elements", "fock_diag_mae_uha": "F MAE, on-site blocks",
    "fock_offdiag_mae_uha": "F MAE, inter-atom blocks", "fock_max_abs_uha": "F max |error|",
    "eps_occ_mae_uha": "occupied eps MAE", "homo_mae_uha": "HOMO MAE", "lumo_mae_uha": "LUMO MAE",
    "gap_mae_uha": "gap MAE", "orbital_cosine": "orbital cosine (occ.)",
    "occupied_subspace": "occupied subspace overlap", "dm_mae": "density matrix MAE",
    "dm_rel_fro": "density matrix rel. Frobenius",
    "energy_mae_mev": "energy MAE (meV/molecule)", "energy_max_mev": "energy max |error| (meV)",
    "force_mae_mev_a": "force MAE (meV/A)", "force_max_mev_a": "force max |error| (meV/A)",
}


def format_metrics(summary: dict, title: str = "") -> str:
    """A plain-text table of a summary from ``evaluate_model``."""
    lines = [title] if title else []
    for key, label in _LABELS.items():
        if key in summary:
            value = summary[key]
            unit = METRIC_UNITS.get(key, "")
            text = f"{value:12.2f}" if unit == "uHa" else f"{value:12.6g}"
            lines.append(f"  {label:<32s}{text} {unit}".rstrip())
    if "n_structures" in summary:
        lines.append(f"  {'structures':<32s}{summary['n_structures']:12d}")
    return "\n".join(lines)


def model_energy_predictions(model: torch.nn.Module, dataset_path, frame_ids, charge: int = 0,
                             gradient: bool = True, labels: str = "reference") -> dict:
    """The model's energies (and gradients) on some frames of a dataset file, next to the reference.

    The model runs in float64 through :class:`~ase_wavecalc.providers.ModelProvider` (the
    calculator's path: degeneracy-safe density response, exact S and h_core derivatives). Returns
    numpy arrays in atomic units: ``energy`` (F,), ``e_ref`` (F,), ``numbers`` (n,) and, with
    ``gradient``, ``gradient`` and ``gradient_ref`` (F, n, 3). ``labels="high"``: the references are the
    frames' high-level labels (``ase_wavecalc.labels``).
    """
    import copy

    from ..labels import read_labeled
    from ..providers import ModelProvider

    keys = ("e_tot", "gradient") if gradient else ("e_tot",)
    data = read_labeled(dataset_path, keys, labels)   # NaN gradient: no forces at that level
    where = {int(f): i for i, f in enumerate(data["frame"])}
    missing = [int(f) for f in frame_ids if int(f) not in where]
    if missing:
        raise ValueError(f"{dataset_path}: frames {missing[:5]} not in the dataset")
    rows = [where[int(f)] for f in frame_ids]
    provider = ModelProvider(copy.deepcopy(model).to(torch.float64), charge=charge,
                             card={"name": "evaluation", "charge": charge})
    results = [provider.compute(data["numbers"], data["positions_bohr"][i], want_gradient=gradient)
               for i in rows]
    out = {"energy": np.array([r.energy for r in results], dtype=float),
           "e_ref": np.asarray(data["e_tot"])[rows], "numbers": np.asarray(data["numbers"])}
    if gradient:
        out["gradient"] = np.stack([r.gradient for r in results])
        out["gradient_ref"] = np.asarray(data["gradient"])[rows]
    return out


def energy_force_errors(model: torch.nn.Module, dataset_path, frame_ids, charge: int = 0,
                        labels: str = "reference") -> dict:
    """Energy and force errors of an energy model on the given frames of a dataset file.

    Evaluated by :func:`model_energy_predictions` (float64, the calculator's path). Returns
    ``energy_mae_mev`` (meV per molecule), ``energy_max_mev``, ``energy_mae_offset_removed_mev`` (after
    removing the mean error), ``force_mae_mev_a`` (meV/Angstrom, per component; NaN when the frames
    have no reference forces), ``force_max_mev_a``, ``n_energy_structures``, ``n_force_structures``.
    ``labels="high"``: against the high-level labels.
    """
    from ..units import HARTREE, HARTREE_PER_BOHR

    pred = model_energy_predictions(model, dataset_path, frame_ids, charge=charge, labels=labels)
    err = (pred["energy"] - pred["e_ref"]) * HARTREE * 1e3
    de = np.abs(err)
    has = np.isfinite(pred["gradient_ref"]).all(axis=(1, 2))
    df = np.abs(pred["gradient"][has] - pred["gradient_ref"][has]).reshape(-1) * HARTREE_PER_BOHR * 1e3
    return {"energy_mae_mev": float(de.mean()), "energy_max_mev": float(de.max()),
            "energy_mae_offset_removed_mev": float(np.abs(err - err.mean()).mean()),
            "force_mae_mev_a": float(df.mean()) if len(df) else float("nan"),
            "force_max_mev_a": float(df.max()) if len(df) else float("nan"),
            "n_energy_structures": int(len(de)), "n_force_structures": int(has.sum())}
