"""The Hamiltonian path (config ``energy_path = "hamiltonian"`` with ``delta_hcore_head = true``):

    E = E_nn + 1/2 Tr[P (F + h_core + Delta h)] + sum_A e0[Z_A] (+ the learned per-atom correction)

with P the aufbau density of the predicted F (``ase_wavecalc.energy``), Delta h the second Fock-shaped head
of the block readouts ("delta_hcore") and the correction an MLP (``atom_correction_mlp``, width
``atom_correction_hidden``) of the invariant channels of the final atom features, or, with ``energy_layers``,
of the energy trunk's. Forces are -dE/dR by autograd through the network, S, h_core and the density response.

Training phases (``run.trainable``): "all"; "delta_hcore_head" (Delta h, e0 and the correction learn, F is
frozen: in the block readouts a gradient mask keeps the F head); "atom_correction" (e0, the correction and
its energy trunk learn on a frozen Hamiltonian whose energies are computed once, ``train/base_energies.py``).
"""
from __future__ import annotations

import torch
from torch import nn

from .base import E0, ENERGY_TRUNK_PREFIXES, EnergyPath, TrainingPhase, build_energy_trunk, energy_trunk, single

__all__ = ["ATOM_CORRECTION_SCALE", "HamiltonianEnergy"]

ATOM_CORRECTION_SCALE = 0.01  # Hartree per unit output of the per-atom correction MLP


def _mask_fock_head(model: nn.Module) -> int:
    """Head 1 (Delta h) of every block readout learns, head 0 (F) does not: a gradient hook zeroes the F
    head's part (with zero weight decay AdamW then leaves it unchanged). Returns the learning entries."""
    from ..model.blocks import BlockReadout

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
    return n


def _needs_energy_trunk(model) -> str | None:
    if getattr(model, "energy_interactions", None) is None:
        return ("needs a model with its own energy trunk: set energy_layers > 0 and atom_correction_hidden > 0 "
                "in [model]")
    return None


def _base_energies(trainer) -> None:
    from ..train.base_energies import prepare_base_energies

    prepare_base_energies(trainer)


def _frozen_fock_metrics(trainer) -> dict:
    return trainer._frozen_val        # computed once by prepare_base_energies: F does not change


class HamiltonianEnergy(EnergyPath):
    name = "hamiltonian"
    formula = ("E = E_nn + 1/2 Tr[P (F + h_core + Delta h)] + sum_A e0[Z_A] (+ learned per-atom correction); "
               "P from the predicted F; forces = -dE/dR by autograd")
    heads = 2
    learned_prefixes = ("atom_correction_mlp.",) + ENERGY_TRUNK_PREFIXES
    _learns = (E0,) + learned_prefixes
    phases = {
        "all": TrainingPhase("all", None),
        "delta_hcore_head": TrainingPhase(
            "delta_hcore_head", _learns, masked=_mask_fock_head,
            description="training the Delta h head, e0 and the per-atom correction only ({n} parameters); the "
                        "Hamiltonian (F) is frozen"),
        "atom_correction": TrainingPhase(
            "atom_correction", _learns, energy_only=True, requirement=_needs_energy_trunk,
            before_loop=_base_energies, fock_metrics=_frozen_fock_metrics,
            description="training the per-atom energy correction only ({n} parameters); F and Delta h are "
                        "frozen"),
    }

    # -- (a) the network: Delta h head, the optional correction MLP and energy trunk
    def check_config(self, cfg: dict) -> None:
        if cfg["energy_layers"] and not cfg["atom_correction_hidden"]:
            raise ValueError("config 'energy_layers' > 0 needs atom_correction_hidden > 0 (the MLP that reads it)")
        super().check_config(cfg)

    def build(self, model: nn.Module, cfg: dict) -> None:
        super().build(model, cfg)
        build_energy_trunk(model, cfg)
        hidden, n_el = cfg["atom_correction_hidden"], len(cfg["elements"])
        if hidden:
            # learned per-atom correction (Hartree) from the invariant (0e) channels of the final atom
            # features (of the energy trunk when there is one) and the element; the last layer starts at
            # zero, so a model trained without it (stage 1) keeps its energies until the correction learns
            n_feat = cfg["energy_channels"] if cfg["energy_layers"] else cfg["channels"]
            model.atom_correction_mlp = nn.Sequential(nn.Linear(n_feat + n_el, hidden), nn.SiLU(),
                                                      nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))
            nn.init.zeros_(model.atom_correction_mlp[-1].weight)
            nn.init.zeros_(model.atom_correction_mlp[-1].bias)

    def outputs(self, model, out: dict, layers: list, ctx) -> dict:
        out = super().outputs(model, out, layers, ctx)
        return self._add_correction(model, out, layers[-1] if layers else None, ctx)

    def energy_only_outputs(self, model, ctx) -> dict:
        """e0 and the correction from the energy trunk, without the Fock trunk (training the correction on a
        frozen Hamiltonian whose energies were computed once)."""
        if model.energy_interactions is None:
            return super().energy_only_outputs(model, ctx)
        out = EnergyPath.outputs(self, model, {}, [], ctx)
        return self._add_correction(model, out, None, ctx)

    @staticmethod
    def _add_correction(model, out: dict, h, ctx) -> dict:
        """The learned per-atom correction (if any; a frozen-Hamiltonian copy may have it removed), summed per
        molecule (B,) Hartree: added to out["atomic_energy_sum"] and as out["learned_energy"]."""
        if model.atom_correction_mlp is None:
            return out
        inv = (energy_trunk(model, ctx)[-1] if model.energy_interactions is not None else h)[:, 0, :]
        per_atom = ATOM_CORRECTION_SCALE * model.atom_correction_mlp(torch.cat([inv, ctx.onehot], 1))[:, 0]
        learned = ctx.onehot.new_zeros(ctx.ix.n_mol).index_add(0, ctx.ix.batch, per_atom)
        out["learned_energy"] = learned
        out["atomic_energy_sum"] = out["atomic_energy_sum"] + learned
        return out

    # -- (b) the provider: energy and gradient from the same forward as F (projector density)
    def compute(self, provider, numbers, positions_bohr, want_gradient: bool):
        from .. import energy as energy_mod

        def energy(out, pos64, fock, mol):
            e_tot, parts = energy_mod.total_energy(
                numbers, pos64, fock, provider.basis, delta_hcore=single(out["delta_hcore"]).to(torch.float64),
                atomic_energy_sum=out["atomic_energy_sum"].reshape(-1)[0].to(torch.float64), charge=provider.charge,
                density="projector", mol=mol)
            return e_tot, parts["overlap"], parts["hcore"]

        return provider.fock_result(numbers, positions_bohr, energy=energy, want_gradient=want_gradient)

    def hessian_energy(self, provider, numbers, pos: torch.Tensor) -> torch.Tensor:
        """Second-derivative integrals and eigh's twice-differentiable density."""
        from .. import energy as energy_mod

        out = provider.forward(numbers, pos)
        e_tot, _ = energy_mod.total_energy(
            numbers, pos, single(out["fock"]).double(), provider.basis,
            delta_hcore=single(out["delta_hcore"]).double(),
            atomic_energy_sum=out["atomic_energy_sum"].reshape(-1)[0].double(), charge=provider.charge,
            density="eigh", derivative_order=2)
        return e_tot
