"""A committee of readout heads for an uncertainty signal (``[model] committee_size``), fitted after training.

The members are K more readout MLPs on the inputs the model's own readout reads (standardized invariants of
each atom's features in the frozen trunks, plus the element one-hot). Each starts from the model's readout
with a random perturbation and is trained on the total energies of a bootstrap resample of the training
frames; their spread at a geometry,
``energy_std`` (and ``forces_std``, its force counterpart), grows where the features leave the region the
training frames cover. The trunks are fixed, so the invariants of the training frames are computed once and
each member trains in seconds on them (Adam on minibatches of 64 frames, early stopping on the
validation frames); the
model's own energy, forces and F do not change.

``fit_committee`` also returns the calibration that the out-of-domain policy uses: the distribution of
``energy_std`` over the validation frames and the warning threshold (``WARN_FACTOR`` x its 99th percentile).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch

from .features import readout_features

__all__ = ["WARN_FACTOR", "atom_inputs", "fit_committee"]

#: energy_std above this multiple of the validation frames' 99th percentile warns (ModelProvider)
WARN_FACTOR = 3.0
#: relative size of the random perturbation of each member's start (x each tensor's mean |weight|)
PERTURBATION = 0.1


def atom_inputs(model: torch.nn.Module, table, rows):
    """(inputs (F, n_atoms, n_in) float32: standardized invariants + one-hot, e0 sums (F,) Hartree) of the
    frames ``rows`` of a FrameTable: what the readout MLP reads."""
    f = readout_features(model, table, rows)
    onehot = torch.nn.functional.one_hot(f["element"], len(model.config["elements"])).to(f["x"].dtype)
    onehot = onehot.expand(f["x"].shape[0], -1, -1)
    return torch.cat([f["x"], onehot], 2).float(), f["e0"]


def fit_committee(model: torch.nn.Module, tables: Sequence, train_rows: Sequence, val_rows: Sequence,
                  seed: int = 0, max_steps: int = 1500, lr: float = 1e-3, log: Callable[[str], None] = print) -> dict:
    """Train ``model.committee_mlps`` in place on the tables' energies (``extra["e_tot"]``); returns a summary
    with the validation energy MAE of each member and the energy_std calibration (meV)."""
    from ..model.network import READOUT_ENERGY_SCALE
    from ..units import HARTREE

    if getattr(model, "committee_mlps", None) is None:
        raise ValueError("the model has no committee (set [model] committee_size)")

    def gather(row_sets):
        xs, ys = [], []
        for table, rows in zip(tables, row_sets):
            if len(rows) == 0:
                continue
            x, e0 = atom_inputs(model, table, rows)
            xs.append(x)
            ys.append(((table.extra["e_tot"][torch.as_tensor(np.asarray(rows))] - e0) / READOUT_ENERGY_SCALE).float())
        return xs, ys

    x_tr, y_tr = gather(train_rows)
    x_va, y_va = gather(val_rows)
    gen = torch.Generator().manual_seed(seed)
    member_mae = []
    for k, head in enumerate(model.committee_mlps):
        # each member starts from the model's own readout, perturbed (so it starts as accurate as the model),
        # then learns a bootstrap resample: members agree where the data pin the readout down
        head.load_state_dict(model.readout_mlp.state_dict())
        head.float()
        noise = torch.Generator().manual_seed(seed + 1000 + k)
        with torch.no_grad():
            for p in head.parameters():
                p.add_(PERTURBATION * p.abs().mean().clamp_min(1e-3) * torch.randn(p.shape, generator=noise))
        boot = [torch.randint(len(y), (len(y),), generator=gen) for y in y_tr]
        opt = torch.optim.Adam(head.parameters(), lr=lr)
        best, best_state, since = np.inf, None, 0
        for step in range(max_steps):
            opt.zero_grad()
            # a minibatch of (up to) 64 frames of each table's bootstrap sample
            pick = [b[torch.randint(len(b), (min(64, len(b)),), generator=gen)] for b in boot]
            loss = sum(((head(x[p]).squeeze(-1).sum(1) - y[p]) ** 2).mean() for x, y, p in zip(x_tr, y_tr, pick))
            loss.backward()
            opt.step()
            if step % 50 == 49:
                with torch.no_grad():
                    val = float(sum(((head(x).squeeze(-1).sum(1) - y).abs()).sum() for x, y in zip(x_va, y_va))
                                / sum(len(y) for y in y_va))
                if val < best * (1 - 1e-3):
                    best, best_state, since = val, copy.deepcopy(head.state_dict()), 0
                else:
                    since += 1
                    if since >= 10:
                        break
        head.load_state_dict(best_state)
        member_mae.append(best * READOUT_ENERGY_SCALE * HARTREE * 1e3)
    with torch.no_grad():   # the heads are still float32, as the inputs
        members = torch.stack([torch.cat([h(x).squeeze(-1).sum(1) for x in x_va]) for h in model.committee_mlps])
    model.committee_mlps.to(model.readout_mlp[0].weight.dtype)
    std_mev = members.double().std(0).numpy() * READOUT_ENERGY_SCALE * HARTREE * 1e3
    p99 = float(np.percentile(std_mev, 99))
    summary = {"size": len(model.committee_mlps), "member_val_energy_mae_mev": [round(v, 3) for v in member_mae],
               "val_energy_std_mev": {"median": float(np.median(std_mev)), "p99": p99, "max": float(std_mev.max())},
               "energy_std_warning_mev": WARN_FACTOR * p99,
               "trained_on": "total energies of bootstrap resamples of the training frames (frozen trunks)"}
    log(f"committee of {summary['size']}: member validation energy MAE {summary['member_val_energy_mae_mev']} meV; "
        f"validation energy_std median {summary['val_energy_std_mev']['median']:.2f}, 99th percentile {p99:.2f} meV; "
        f"warning above {summary['energy_std_warning_mev']:.2f} meV")
    return summary
