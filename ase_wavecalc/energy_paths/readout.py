"""The readout path (config ``energy_path = "readout"``, the shipped models):

    E = sum_A [e0[Z_A] + 0.01 Ha * MLP(d_A, onehot(Z_A))] (+ sum_A w[Z_A] . d_A with the transfer head)

d_A: invariant descriptors of atom A (``model.readout.atom_invariants``: 0e channels and squared norms of
every (irrep, channel)) of every block of the Fock trunk and, with ``energy_layers``, of the energy trunk
beside it, standardized with ``readout_standardize``. The energy does not need F: the provider runs
``model(..., energy_only=True)`` and defers F, orbitals and density (``DeferredHamiltonianResult``).
Optional: ``committee_size`` more readout MLPs on the same inputs (their spread: ``energy_std``,
``forces_std``) and the linear transfer head (``transfer_weight``).

Training phases (``run.trainable``): "all"; "energy_readout" (e0, the readout MLP, the energy trunk and the
transfer head learn; the Fock network is frozen); "transfer_head" (its weights and e0, fitted in closed
form before the first step, ``train/transfer.py``). Without F terms in [loss] every step runs the atom
trunks and the MLP only.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .base import (E0, ENERGY_TRUNK_PREFIXES, EnergyPath, TrainingPhase, _new_trunk, build_energy_trunk,
                   energy_trunk, with_fast_steps)

__all__ = ["READOUT_ENERGY_SCALE", "ReadoutEnergy"]

READOUT_ENERGY_SCALE = 0.01  # Hartree per unit output of the readout MLP


def _needs_transfer_head(model) -> str | None:
    return None if getattr(model, "transfer_weight", None) is not None else "needs [model] transfer_head = true"


def _fit_transfer_head(trainer, fresh: bool) -> None:
    """Before the first step, the transfer head's closed-form fit (train/transfer.py)."""
    if not fresh:
        return
    import json

    from ..train.runlog import _atomic_write_text
    from ..train.runtime import _one_thread
    from ..train.transfer import fit_transfer_head

    run = trainer.config.run
    with _one_thread():
        trainer.transfer_fit = fit_transfer_head(trainer.model, trainer.tables, trainer.rows["train"],
                                                 trainer.rows["val"], alpha=run.transfer_alpha, log=trainer.log)
    _atomic_write_text(trainer.run_dir / "transfer_fit.json", json.dumps(trainer.transfer_fit, indent=1))


def _mlp(n_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 1))


class ReadoutEnergy(EnergyPath):
    name = "readout"
    formula = ("E = sum_A (e0[Z_A] + MLP(invariants of atom A's features in the Fock trunk and, with "
               "energy_layers, in the energy trunk beside it)); the same network predicts F (orbitals, density, "
               "dipole, charges), which the energy does not need; forces = -dE/dR by autograd")
    learned_prefixes = ENERGY_TRUNK_PREFIXES + ("readout_mlp.", "readout_norm.", "transfer_weight")
    phases = {
        "all": TrainingPhase("all", None),
        "energy_readout": TrainingPhase(
            "energy_readout", (E0,) + learned_prefixes,
            description="training the energy readout only ({n} parameters: e0, the readout MLP and the energy "
                        "trunk); F is frozen"),
        "transfer_head": TrainingPhase(
            "transfer_head", ("transfer_weight", E0), requirement=_needs_transfer_head, prepare=_fit_transfer_head,
            description="training the linear transfer head only ({n} parameters); the network is frozen"),
    }

    # -- (a) the network: readout MLP (+ standardization, committee, transfer head), optional energy trunk
    def check_config(self, cfg: dict) -> None:
        if cfg["readout_hidden"] < 1:
            raise ValueError("config 'readout_hidden' must be positive")
        if cfg["delta_hcore_head"] or cfg["atom_correction_hidden"]:
            raise ValueError("energy_path = 'readout' reads the energy from the Fock trunk itself: set "
                             "delta_hcore_head = false and atom_correction_hidden = 0 (energy_layers > 0 "
                             "adds an energy trunk beside it)")
        if cfg["num_layers"] < 1:
            raise ValueError("energy_path = 'readout' needs num_layers >= 1")
        if cfg["committee_size"] and cfg["committee_size"] < 2:
            raise ValueError("committee_size needs energy_path = 'readout' and at least 2 members (0: none)")
        if cfg["transfer_head"] and not cfg["readout_standardize"]:
            raise ValueError("transfer_head = true needs energy_path = 'readout' with readout_standardize = true "
                             "(it is linear in the standardized invariants)")

    def build(self, model: nn.Module, cfg: dict) -> None:
        from ..model.readout import Standardize

        super().build(model, cfg)
        build_energy_trunk(model, cfg)
        C, n_el, layout = cfg["channels"], len(cfg["elements"]), model.layout
        # per-atom energy from the invariants of every interaction block's output: the 0e channels and the
        # squared norm of each (irrep, channel); the last layer starts at zero (E = sum e0)
        n_in = cfg["num_layers"] * C * (1 + layout.n_irreps) + n_el
        if model.energy_interactions is not None:   # the energy trunk's invariants beside the Fock trunk's
            n_in += cfg["energy_layers"] * cfg["energy_channels"] * (1 + model.energy_layout.n_irreps)
            model.register_buffer("energy_irrep_of_component", model.energy_layout.comp_irrep_l.clone(),
                                  persistent=False)
        width = cfg["readout_hidden"]
        model.readout_mlp = _mlp(n_in, width)
        # fixed standardization of the invariants (set from training frames before training): their scales
        # span 1e-4 (squared norms of high-L Fock features) to 10, which an MLP sees badly
        model.readout_norm = Standardize(n_in - n_el) if cfg["readout_standardize"] else None
        nn.init.zeros_(model.readout_mlp[-1].weight)
        nn.init.zeros_(model.readout_mlp[-1].bias)
        # uncertainty: a committee of readout MLPs on the same inputs (train.committee fits them)
        model.committee_mlps = (nn.ModuleList([_mlp(n_in, width) for _ in range(cfg["committee_size"])])
                                if cfg["committee_size"] else None)
        # transfer learning: a linear, per-element function of the same standardized invariants (Hartree), zero
        # until fitted (train.transfer)
        model.transfer_weight = (nn.Parameter(torch.zeros(n_el, n_in - n_el, dtype=torch.get_default_dtype()))
                                 if cfg["transfer_head"] else None)
        model.register_buffer("irrep_of_component", layout.comp_irrep_l.clone(), persistent=False)

    def outputs(self, model, out: dict, layers: list, ctx) -> dict:
        """out["energy"] (B,) Hartree = sum_A e0[Z_A] + MLP(invariants of A): those of every Fock-trunk block
        and, with ``energy_layers``, of every energy-trunk block; with ``transfer_head`` + sum_A w[Z_A] . x_A
        (x: the standardized invariants), also as out["transfer_correction"] (B,); with ``committee_size`` K,
        out["energy_committee"] (B, K): the energies of K more readout MLPs on the same inputs. The learned
        part (MLP + transfer head) is out["learned_energy"] (B,), out["atomic_energy_sum"] = out["energy"]; a
        network not in float64 also gives out["energy_offset_sum"] (B,), the e0 sum in float64."""
        from ..model.readout import atom_invariants

        ix, onehot = ctx.ix, ctx.onehot
        e0 = model.element_energy_offsets[ix.elem]
        inv = [ctx.fock_invariants if ctx.fock_invariants is not None else self.fock_invariants(model, layers)]
        if model.energy_interactions is not None:
            inv.append(atom_invariants(energy_trunk(model, ctx), model.energy_irrep_of_component,
                                       model.energy_layout.n_irreps))
        inv = torch.cat(inv, 1)
        out["readout_inputs"] = inv.detach()
        if model.readout_norm is not None:
            inv = model.readout_norm(inv)
        x = torch.cat([inv, onehot], 1)
        per_atom = READOUT_ENERGY_SCALE * model.readout_mlp(x)[:, 0]
        zero = onehot.new_zeros(ix.n_mol)
        if model.committee_mlps is not None:   # (B, K) energies of the committee members
            members = READOUT_ENERGY_SCALE * torch.cat([m(x) for m in model.committee_mlps], 1)
            base = zero.index_add(0, ix.batch, e0)
            out["energy_committee"] = base[:, None] + onehot.new_zeros(ix.n_mol, members.shape[1]).index_add(
                0, ix.batch, members)
        if model.transfer_weight is not None:
            transfer = (model.transfer_weight[ix.elem] * inv).sum(-1)
            out["transfer_correction"] = zero.index_add(0, ix.batch, transfer)
            per_atom = per_atom + transfer
        out["learned_energy"] = zero.index_add(0, ix.batch, per_atom)
        out["atomic_energy_sum"] = out["energy"] = zero.index_add(0, ix.batch, e0) + out["learned_energy"]
        if e0.dtype != torch.float64:
            # a float32 network's total energy (~100-400 Hartree) is rounded to 1-3e-5 Hartree (0.4-0.8 meV),
            # the size of the errors it trains against: the loss adds the learned part to the e0 sum in float64
            out["energy_offset_sum"] = zero.double().index_add(0, ix.batch, e0.double())
        return out

    def energy_only_outputs(self, model, ctx) -> dict:
        """The atom trunk(s) and the MLP: no pair features, no F (the fast path of MD and optimizers). Where
        ``ctx.fock_invariants`` are given, the Fock trunk does not run."""
        return self.outputs(model, {}, model.fock_trunk(ctx) if ctx.fock_invariants is None else None, ctx)

    @staticmethod
    def fock_invariants(model, layers: list) -> torch.Tensor:
        """(N, M) the readout's descriptors of the Fock trunk's block outputs ``layers``."""
        from ..model.readout import atom_invariants

        return atom_invariants(layers, model.irrep_of_component, model.layout.n_irreps)

    # -- (b) the provider: energy and gradient without F; F, orbitals and density deferred
    def fast_path(self, model, mode, compile):
        """``model.fast.FastPath``: the same energy function built once per molecule (float64 or float32,
        optionally torch.compiled); ``mode`` None/False: the eager network."""
        from ..model.fast import FastPath

        return FastPath(model, mode, compile=compile, device=_model_device(model))

    def compute(self, provider, numbers, positions_bohr, want_gradient: bool):
        """Energy (and gradient) through the provider's fast path when it has one (``provider.fast``), else
        the eager network; F, orbitals and density deferred. The committee's forces (``forces_std``, on
        request) always come from the eager network."""
        from ..providers.model import DeferredHamiltonianResult

        start = time.perf_counter()
        fast = provider.fast.compute(numbers, positions_bohr, want_gradient)
        if fast is not None:   # the same energy function, built once per molecule (model/fast.py)
            e_value, gradient, members = fast
            info = {"seconds": time.perf_counter() - start, "model": provider.name, "energy_path": "readout",
                    "fast": provider.fast.mode, "compiled": provider.fast.compiled(numbers) is not None}
            if members is not None:
                info["energy_std"] = float(np.std(members, ddof=1))
                provider.check_uncertainty(info["energy_std"])
                if want_gradient:   # the members' forces on request, from the eager network
                    info["_committee_forces"] = lambda: _eager_member_gradients(provider, numbers, positions_bohr)
            return DeferredHamiltonianResult(e_value, gradient, info,
                                             lambda: provider.fock_result(numbers, positions_bohr))
        pos64 = torch.tensor(positions_bohr, requires_grad=want_gradient)
        with torch.set_grad_enabled(want_gradient):
            out = provider.forward(numbers, pos64, energy_only=True)
            e_tot = out["energy"].reshape(-1)[0].to(torch.float64)
            gradient = (torch.autograd.grad(e_tot, pos64, retain_graph="energy_committee" in out)[0].detach()
                        if want_gradient else None)
        info = {"seconds": time.perf_counter() - start, "model": provider.name, "energy_path": "readout"}
        if "energy_committee" in out:
            members = out["energy_committee"].reshape(-1).to(torch.float64)
            info["energy_std"] = float(members.detach().std())
            provider.check_uncertainty(info["energy_std"])
            if want_gradient:   # the members' forces, for forces_std on request, without another forward
                info["_committee_forces"] = lambda: _member_gradients(members, pos64)
        return DeferredHamiltonianResult(
            float(e_tot.detach()), None if gradient is None else gradient.numpy(), info,
            lambda: provider.fock_result(numbers, positions_bohr))

    def hessian_energy(self, provider, numbers, pos: torch.Tensor) -> torch.Tensor:
        """The atom trunks and the MLP, twice differentiated."""
        return provider.forward(numbers, pos, energy_only=True)["energy"].reshape(-1)[0].double()

    def uncertainty(self, provider, numbers, positions_bohr) -> dict:
        """Committee spread at a geometry: {"energy_std": Hartree, "gradient_std": (n, 3) Hartree/Bohr} (the
        standard deviation over the members, per component)."""
        if provider.model.config.get("committee_size", 0) < 2:
            return super().uncertainty(provider, numbers, positions_bohr)
        result = provider.compute(numbers, positions_bohr, want_gradient=True)
        if "_grad_std" not in result.info:
            result.info["_grad_std"] = result.info.pop("_committee_forces")().std(axis=0, ddof=1)
        return {"energy_std": result.info["energy_std"], "gradient_std": result.info["_grad_std"]}

    # -- (c) training
    def phase(self, trainable: str, loss_weights: dict) -> TrainingPhase:
        """Without F terms (an MLIP of the same network, or a frozen Fock network) every step runs the atom
        trunk(s) and the energy MLP only, and the validation F errors are NaN."""
        phase = super().phase(trainable, loss_weights)
        if any(k.startswith(("fock", "orbital")) for k in loss_weights):
            return phase
        return with_fast_steps(phase)

    def initial_energy_offsets(self, tables, row_sets, elements) -> torch.Tensor:
        """e0 fits the reference energies themselves (E = sum e0 + learned part)."""
        from ..train.setup import reference_atom_energies

        return reference_atom_energies(tables, row_sets, elements, hamiltonian=False)

    def adapt_initial_weights(self, state: dict, own: dict) -> dict:
        """e0 of a Hamiltonian-path model absorbs 1/2 Tr[P (F + h)], meaningless here: zeroed (then refitted
        from the reference energies). An energy trunk of the same shape (trained as a correction, its features
        describe the energy) is kept, and so is a readout that fits; the readout MLP of another shape starts
        afresh."""
        from . import LEARNED_ENERGY_PREFIXES

        if E0 in state and not any(k.startswith("readout_mlp.") for k in state):
            state = {**state, E0: torch.zeros_like(state[E0])}
        if _new_trunk(state, own):
            return super().adapt_initial_weights(state, own)
        state = {k: v for k, v in state.items() if not k.startswith("committee_mlps.") or k in own}
        return {k: v for k, v in state.items() if not k.startswith(LEARNED_ENERGY_PREFIXES)
                or (k in own and own[k].shape == v.shape)}

    def prepare_fresh_model(self, trainer, loaded_norm: bool) -> None:
        """The readout standardization from training frames (a readout trained before keeps the statistics it
        learned with)."""
        if trainer.model.readout_norm is not None and not loaded_norm:
            from ..train.setup import standardize_readout

            standardize_readout(trainer)

    def batch_energy(self, model, batch) -> torch.Tensor:
        return model(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)["energy"]


def _model_device(model) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _eager_member_gradients(provider, numbers, positions_bohr) -> np.ndarray:
    """(K, n, 3) committee gradients from the eager network (the fast path runs the committee without autograd)."""
    pos64 = torch.tensor(np.asarray(positions_bohr, dtype=np.float64), requires_grad=True)
    out = provider.forward(numbers, pos64, energy_only=True)
    return _member_gradients(out["energy_committee"].reshape(-1).to(torch.float64), pos64)


def _member_gradients(members, pos64) -> np.ndarray:
    """(K, n, 3) Hartree/Bohr gradients of the committee members' energies (one batched backward)."""
    eye = torch.eye(len(members), dtype=members.dtype)
    (grads,) = torch.autograd.grad(members, pos64, grad_outputs=eye, is_grads_batched=True)
    return grads.detach().numpy()

