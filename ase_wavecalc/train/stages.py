"""At what rate weights learn in a training stage: parameter groups with their own learning rates
(``optimizer.lr_by_prefix``), the rate of each step (warm-up, cosine schedule), and the adaptation of earlier weights to a model without the Delta h head
(``run.init_weights``). Which weights learn (``run.trainable``) is a training phase of the model's energy
path (``ase_wavecalc.energy_paths``: ``energy_path_for(config).phase(name, loss).freeze(model)``).
"""
from __future__ import annotations

import math

import torch

from .config import TrainingError

__all__ = ["parameter_groups", "set_scheduled_lrs", "adapt_readout_heads"]


def set_scheduled_lrs(optimizer, step: int, warmup_steps: int, scheduler, train_time_s: float) -> None:
    """The learning rates of step ``step``: a linear warm-up over the run's first ``warmup_steps`` (the plateau
    scheduler, which acts only after ``patience`` epochs, takes over from the base lr); with
    ``scheduler.kind == "cosine"``, base lr x warm-up x (1 + cos(pi t / horizon)) / 2, t = ``train_time_s``, the
    run's training wall time over all invocations (seconds), never below ``scheduler.min_lr``."""
    factor = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if scheduler.kind == "cosine":
        frac = min(1.0, train_time_s / (60.0 * scheduler.horizon_min))
        for group in optimizer.param_groups:
            cosine = 0.5 * (1.0 + math.cos(math.pi * frac))
            group["lr"] = max(scheduler.min_lr, group["base_lr"] * factor * cosine)
    elif warmup_steps and step <= warmup_steps:
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor


def plateau_step(scheduler, optimizer, val_loss: float, min_lr: float) -> bool:
    """``scheduler.step(val_loss)`` (ReduceLROnPlateau); True where the lr was at ``min_lr`` already and the
    scheduler would have lowered it once more: a further patience of epochs without a better loss."""
    at_floor = all(g["lr"] <= min_lr * (1.0 + 1e-6) for g in optimizer.param_groups)
    due, best = scheduler.num_bad_epochs >= scheduler.patience, scheduler.best
    scheduler.step(val_loss)
    return at_floor and due and scheduler.best == best


def parameter_groups(model: torch.nn.Module, lr: float, lr_by_prefix: dict) -> list[dict]:
    """AdamW parameter groups: one per prefix of ``lr_by_prefix`` (the first matching prefix wins) and
    one for the rest at ``lr``; each group remembers its base lr (``base_lr``) for the warm-up."""
    groups = {prefix: [] for prefix in lr_by_prefix}
    rest = []
    for name, p in model.named_parameters():
        prefix = next((k for k in lr_by_prefix if name.startswith(k)), None)
        (rest if prefix is None else groups[prefix]).append(p)
    unused = [k for k, ps in groups.items() if not ps]
    if unused:
        raise TrainingError(f"optimizer.lr_by_prefix: no parameter name starts with {unused}")
    out = [{"params": rest, "lr": lr, "base_lr": lr}] if rest else []
    out += [{"params": ps, "lr": lr_by_prefix[k], "base_lr": lr_by_prefix[k]} for k, ps in groups.items()]
    return out


def adapt_readout_heads(state: dict, own: dict) -> dict:
    """Block-readout weights of a model with the Delta h head (2 heads) for one without it: the
    Fock head's part, so a readout-energy model can start from a Hamiltonian-path model's F."""
    out = dict(state)
    for key, value in state.items():
        if not key.startswith(("atom_readout.", "pair_readout.")) or key not in own:
            continue
        target = own[key].shape
        if value.shape == target:
            continue
        if key.endswith(".weight") and value.dim() == 3 and value.shape[2] == 2 * target[2]:
            out[key] = value.reshape(value.shape[0], value.shape[1], 2, target[2])[:, :, 0].contiguous()
        elif key.endswith(".bias") and value.dim() == 2 and value.shape[0] == 2 and target[0] == 1:
            out[key] = value[:1].clone()
    return out
