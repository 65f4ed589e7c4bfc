"""Which weights learn in a training stage, and at what rate: freezing for the staged recipes
(``run.trainable``), parameter groups with their own learning rates (``optimizer.lr_by_prefix``), and the
adaptation of earlier weights to a readout model (``run.init_weights``).
"""
from __future__ import annotations

import torch

from .config import TrainingError

__all__ = ["LEARNED_ENERGY_PREFIXES", "freeze_hamiltonian", "freeze_all_but_atom_correction",
           "freeze_all_but_energy_readout", "freeze_all_but_transfer_head", "parameter_groups", "adapt_readout_heads"]


def freeze_hamiltonian(model: torch.nn.Module) -> int:
    """``run.trainable = "delta_hcore_head"``: let only the energy parts learn: the Delta h head of the block
    readouts (``delta_hcore``), e0 and the per-atom correction (MLP and its trunk, if any).

    Used for a second training stage on energies and forces after the Fock matrix has been learned: the
    energy terms then cannot degrade F. Trunk parameters stop requiring grad; in readouts shared by both
    heads a gradient hook zeroes the Fock head's part (with zero weight decay, AdamW then leaves it
    unchanged). Returns the number of trainable entries.
    """
    from ..model.blocks import BlockReadout

    if getattr(model, "heads", 1) < 2:
        raise TrainingError("run.trainable = 'delta_hcore_head' needs a model with delta_hcore_head = true")
    for p in model.parameters():
        p.requires_grad_(False)
    n = 0
    for module in model.modules():
        if not isinstance(module, BlockReadout):
            continue
        copies = module.copies
        w_mask = torch.ones_like(module.weight)
        w_mask[..., :copies] = 0.0          # head 0 (Fock) is frozen, head 1 (Delta h) learns
        module.weight.requires_grad_(True)
        module.weight.register_hook(lambda g, m=w_mask: g * m.to(g.dtype))
        n += int((w_mask * module.mask.to(w_mask.dtype)).sum().item())
        if module.has_bias:
            b_mask = torch.ones_like(module.bias)
            b_mask[0] = 0.0
            module.bias.requires_grad_(True)
            module.bias.register_hook(lambda g, m=b_mask: g * m.to(g.dtype))
            n += int((b_mask * module.bias_mask.to(b_mask.dtype)).sum().item())
    return n + _unfreeze_energy_parts(model)


#: parameter-name prefixes of the learned energy parts besides e0 (``element_energy_offsets``): the per-atom
#: correction, the energy trunk, the readout MLP and its standardization, the transfer head (a later stage may
#: add them to earlier weights)
LEARNED_ENERGY_PREFIXES = ("atom_correction_mlp.", "energy_embedding", "energy_interactions.", "readout_mlp.",
                              "readout_norm.", "transfer_weight")


def _unfreeze_energy_parts(model: torch.nn.Module) -> int:
    n = 0
    for name, p in model.named_parameters():
        if name == "element_energy_offsets" or name.startswith(LEARNED_ENERGY_PREFIXES):
            p.requires_grad_(True)
            n += p.numel()
    return n


def freeze_all_but_atom_correction(model: torch.nn.Module) -> int:
    """``run.trainable = "atom_correction"``: let only e0, the per-atom correction MLP and its trunk
    (``energy_layers``) learn.

    F and the Delta h head stay exactly as they are, so the energy of the Hamiltonian part is a
    fixed function of the geometry and the correction learns what it misses (Delta-learning on top of
    the electronic structure). Returns the number of trainable entries.
    """
    if getattr(model, "energy_interactions", None) is None:
        raise TrainingError("run.trainable = 'atom_correction' needs a model with its own energy trunk: "
                            "set energy_layers > 0 and atom_correction_hidden > 0 in [model]")
    for p in model.parameters():
        p.requires_grad_(False)
    return _unfreeze_energy_parts(model)


def freeze_all_but_energy_readout(model: torch.nn.Module) -> int:
    """energy_path "readout": let only e0, the readout MLP and the energy trunk (if any) learn. The Fock
    network stays bit-identical (F, orbitals and their metrics do not move) while the MLP still reads its
    atom features. Returns the number of trainable entries."""
    if getattr(model, "readout_mlp", None) is None:
        raise TrainingError("run.trainable = 'energy_readout' needs [model] energy_path = 'readout'")
    for p in model.parameters():
        p.requires_grad_(False)
    return _unfreeze_energy_parts(model)


def freeze_all_but_transfer_head(model: torch.nn.Module) -> int:
    """Transfer learning with the linear head (``transfer_head``): only its weights and e0 learn; the
    network the level below was trained with, its energy readout included, stays as it is. Returns the
    number of trainable entries."""
    if getattr(model, "transfer_weight", None) is None:
        raise TrainingError("run.trainable = 'transfer_head' needs [model] transfer_head = true")
    for p in model.parameters():
        p.requires_grad_(False)
    model.transfer_weight.requires_grad_(True)
    model.element_energy_offsets.requires_grad_(True)
    return model.transfer_weight.numel() + model.element_energy_offsets.numel()


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
