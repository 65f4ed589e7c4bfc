"""What every energy path is: ``EnergyPath`` (the interface and the parts the paths share) and
``TrainingPhase`` (one value of ``run.trainable``: which weights learn and how a step runs).

An energy path owns, for the models that compute their energy its way:

| part | methods | used by |
|---|---|---|
| (a) its modules in the network | ``heads``, ``check_config``, ``build``, ``outputs``, ``energy_only_outputs``, ``learned_prefixes`` | ``model/network.py``, ``model/config.py`` |
| (b) energy and gradient for the provider | ``fast_path``, ``compute``, ``serves``, ``hessian_energy``, ``require_energy``, ``uncertainty``, ``warn_if_inaccurate`` | ``providers/model.py`` |
| (c) which weights each training phase trains | ``phase``, ``phases``, ``initial_energy_offsets``, ``adapt_initial_weights``, ``prepare_fresh_model``, ``batch_energy`` | ``train/trainer.py``, ``train/setup.py`` |
| (d) its model-card entry | ``card_entries``, ``levels_of_theory``, ``trained_by``, ``refit_offsets``, ``test_metrics`` | ``train/cli_export.py`` |

Paths are stateless singletons (one per name; a deep copy or pickle of a model gives back the same
object); what a model adds within a path (a committee, an energy trunk, ...) is its config's.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

__all__ = ["E0", "ENERGY_TRUNK_PREFIXES", "EnergyPath", "TrainingPhase", "build_energy_trunk", "energy_trunk",
           "single"]

#: the per-element energy offsets e0 (every model has them; every energy phase trains them)
E0 = "element_energy_offsets"
#: the optional energy trunk (config energy_layers) that both energy paths may read
ENERGY_TRUNK_PREFIXES = ("energy_embedding", "energy_interactions.")


@dataclass(frozen=True)
class TrainingPhase:
    """One ``run.trainable`` value on one energy path.

    ``learns``: the parameter-name prefixes that learn (None: every weight); ``masked(model) -> int``: parts
    of parameters that learn too (gradient masks; returns their entries); ``requirement(model) -> str|None``:
    why a model of the path cannot run the phase; ``energy_only``: every step runs ``model(...,
    energy_only=True)`` (no F, so no validation F errors: ``fock_metrics(trainer)`` gives them);
    ``prepare(trainer, fresh)``: set-up after freezing, before the EMA and optimizer exist;
    ``before_loop(trainer)``: once the model is built, before the first step; ``description``: the log line
    ("{n}": the number of trainable entries; empty: nothing logged).
    """

    name: str
    learns: tuple[str, ...] | None
    description: str = ""
    energy_only: bool = False
    masked: Callable | None = None
    requirement: Callable | None = None
    prepare: Callable | None = None
    before_loop: Callable | None = None
    fock_metrics: Callable | None = None

    def freeze(self, model: nn.Module) -> int:
        """Make exactly this phase's weights trainable (the others stop requiring grad); returns the number
        of trainable entries. ``TrainingError`` when the model cannot run the phase."""
        from ..train.config import TrainingError

        reason = self.requirement(model) if self.requirement is not None else None
        if reason:
            raise TrainingError(f"run.trainable = {self.name!r} {reason}")
        if self.learns is None:
            return sum(p.numel() for p in model.parameters() if p.requires_grad)
        for p in model.parameters():
            p.requires_grad_(False)
        n = self.masked(model) if self.masked is not None else 0
        for name, p in model.named_parameters():
            if name.startswith(self.learns):
                p.requires_grad_(True)
                n += p.numel()
        return n

    def trainable_names(self, model: nn.Module) -> list[str]:
        """The parameters (names) this phase lets learn, wholly or in part (``masked``)."""
        if self.learns is None:
            return [name for name, _ in model.named_parameters()]
        masked = set(_masked_names(model)) if self.masked is not None else set()
        return [name for name, _ in model.named_parameters() if name.startswith(self.learns) or name in masked]


def _masked_names(model):
    from ..model.blocks import BlockReadout

    return [f"{prefix}.{attr}" for prefix, module in model.named_modules() if isinstance(module, BlockReadout)
            for attr in ("weight", "bias") if getattr(module, attr, None) is not None
            and isinstance(getattr(module, attr), nn.Parameter)]


def _fock_metrics_nan(trainer) -> dict:
    return {"val_fock_mae_uha": float("nan"), "val_eps_mae_uha": float("nan")}


class EnergyPath:
    """The interface (table in the module docstring); subclasses: one per path."""

    #: registry name: the card's ``energy_path.name``
    name: str = ""
    #: the card's ``energy_path.formula``
    formula: str = ""
    #: Fock-shaped heads of the block readouts (2: F and Delta h)
    heads: int = 1
    #: parameter-name prefixes of the path's learned energy parts besides e0
    learned_prefixes: tuple[str, ...] = ()

    # -- singletons -----------------------------------------------------------------------------------
    def __deepcopy__(self, memo):
        return self

    def __copy__(self):
        return self

    def __reduce__(self):
        from . import energy_path_named

        return (energy_path_named, (self.name,))

    def __repr__(self):
        return f"<energy path {self.name!r}>"

    # -- (a) the network ------------------------------------------------------------------------------
    def check_config(self, cfg: dict) -> None:
        """Path-specific checks of a resolved config (ValueError)."""
        if cfg["committee_size"]:
            raise ValueError("committee_size needs energy_path = 'readout' and at least 2 members (0: none)")
        if cfg["transfer_head"]:
            raise ValueError("transfer_head = true needs energy_path = 'readout' with readout_standardize = true "
                             "(it is linear in the standardized invariants)")

    def build(self, model: nn.Module, cfg: dict) -> None:
        """Add the path's modules to ``model`` (called after e0 is created, in this order, so the random
        initialization of every model is that of the versions before the paths were objects)."""
        model.atom_correction_mlp = None
        model.readout_mlp = model.readout_norm = model.transfer_weight = model.committee_mlps = None

    def outputs(self, model, out: dict, layers: list, ctx) -> dict:
        """The energy outputs of a full forward, added to ``out`` (which holds "fock", ...); ``layers``: every
        Fock-trunk block's output, ``ctx``: the ``model.interaction.EdgeContext``."""
        e0 = model.element_energy_offsets[ctx.ix.elem]
        out["atomic_energy_sum"] = ctx.onehot.new_zeros(ctx.ix.n_mol).index_add(0, ctx.ix.batch, e0)
        return out

    def energy_only_outputs(self, model, ctx) -> dict:
        """``model(..., energy_only=True)``: the energy outputs without F."""
        raise ValueError("energy_only needs a model with energy_layers > 0 or energy_path = 'readout'")

    # -- (b) the provider -----------------------------------------------------------------------------
    def fast_path(self, model, mode, compile):
        """The provider's ``fast`` (``model.fast.FastPath``) for its options ``fast=mode``, ``compile``: the
        path's fast energy+forces function, which its ``compute`` may use. Only the readout path has one; the
        options are checked for every model."""
        from ..model.fast import FastPath, fast_mode

        fast_mode(mode)
        fast = FastPath(model, None, compile=compile)
        fast.reason = f"energy path {self.name!r} has no fast path"
        return fast

    def compute(self, provider, numbers, positions_bohr, want_gradient: bool):
        """The provider's result at one geometry (``HamiltonianResult`` or a deferred one)."""
        raise NotImplementedError

    def serves(self, cached, want_gradient: bool) -> bool:
        """Whether a result computed before at the same geometry answers this request."""
        return not want_gradient or cached.gradient is not None

    def hessian_energy(self, provider, numbers, pos: torch.Tensor) -> torch.Tensor:
        """The total energy (0-dim float64, Hartree), twice differentiable in ``pos`` (n, 3) Bohr."""
        raise NotImplementedError

    def require_energy(self, provider) -> None:
        """``PropertyNotImplementedError`` when the model has no energy (nothing for energy paths)."""

    def uncertainty(self, provider, numbers, positions_bohr) -> dict:
        """The committee spread (``ModelProvider.uncertainty``); only readout models can have a committee."""
        from ase.calculators.calculator import PropertyNotImplementedError

        raise PropertyNotImplementedError(f"model {provider.name!r} has no committee: no uncertainty "
                                          "(add one with `wavecalc committee`)")

    def warn_if_inaccurate(self, name: str, card: dict) -> None:
        """A UserWarning at load when the card's held-out energy or force error is large."""
        from ..providers.model import warn_if_inaccurate

        warn_if_inaccurate(name, card.get("test_metrics") or {})

    # -- (c) training ---------------------------------------------------------------------------------
    #: run.trainable -> TrainingPhase (subclasses fill it)
    phases: dict = {}
    #: what a phase of another path needs, for the error message
    _needs = {"delta_hcore_head": "needs a model with delta_hcore_head = true",
              "atom_correction": "needs a model with its own energy trunk: set energy_layers > 0 and "
                                 "atom_correction_hidden > 0 in [model]",
              "energy_readout": "needs [model] energy_path = 'readout'",
              "transfer_head": "needs [model] transfer_head = true"}

    def phase(self, trainable: str, loss_weights: dict) -> TrainingPhase:
        """The phase ``run.trainable = trainable`` of this path (``TrainingError`` if it has none)."""
        from ..train.config import TrainingError

        if trainable not in self.phases:
            raise TrainingError(f"run.trainable = {trainable!r} {self._needs.get(trainable, 'is not a phase')} "
                                f"(this model's energy path is {self.name!r}, whose phases are "
                                f"{sorted(self.phases)})")
        return self.phases[trainable]

    def initial_energy_offsets(self, tables, row_sets, elements) -> torch.Tensor:
        """e0 before training: what makes E_nn + 1/2 Tr[P (F_ref + h)] + sum e0 fit the reference energies."""
        from ..train.setup import reference_atom_energies

        return reference_atom_energies(tables, row_sets, elements, hamiltonian=True)

    def adapt_initial_weights(self, state: dict, own: dict) -> dict:
        """Earlier weights (``run.init_weights``) for this model: a committee it does not carry and learned
        energy parts that do not fit (or that read features of a trunk that is new) are left out."""
        from . import LEARNED_ENERGY_PREFIXES

        state = {k: v for k, v in state.items() if not k.startswith("committee_mlps.") or k in own}
        corr = [k for k in state if k.startswith(LEARNED_ENERGY_PREFIXES)]
        if _new_trunk(state, own) or any(k not in own or own[k].shape != state[k].shape for k in corr):
            state = {k: v for k, v in state.items() if k not in corr}
        return state

    def prepare_fresh_model(self, trainer, loaded_norm: bool) -> None:
        """Set-up of a fresh run's model after e0 (the readout's standardization)."""

    def batch_energy(self, model, batch) -> torch.Tensor:
        """(B,) energies of a batch without F (``run.refit_energy_offsets``)."""
        from ..train.config import TrainingError

        raise TrainingError("run.refit_energy_offsets needs a model with energy_path = 'readout'")

    # -- (d) the model card ---------------------------------------------------------------------------
    def trained_by(self, loss: dict) -> "EnergyPath":
        """The path a run with these [loss] weights trained: this one, or no energy without energy terms."""
        from . import NO_ENERGY

        return self if float(loss.get("energy", 0)) > 0 or float(loss.get("forces", 0)) > 0 else NO_ENERGY

    def card_entries(self) -> dict:
        """The model card's keys for this path (``energy_trained``: for readers of older cards)."""
        return {"energy_trained": True, "energy_path": {"name": self.name, "formula": self.formula}}

    def levels_of_theory(self, level: dict, high_level: dict | None) -> dict:
        """The card's energy level of theory: the Hamiltonian's ``level``, or for energies trained on
        high-level labels (transfer learning) that ``high_level`` (the card's ``level_of_theory`` stays the
        Hamiltonian's)."""
        return {"energy_level_of_theory": dict(level) if high_level is None else high_level}

    def refit_offsets(self, model, datasets, charge: int, labels) -> dict | None:
        """``wavecalc export``: e0 refit by least squares on training frames (train/offsets.py)."""
        from ..train.offsets import refit_energy_offsets

        return refit_energy_offsets(model, datasets, charge=charge, labels=labels)

    def test_metrics(self, model, path, frames, charge: int, labels: str) -> dict:
        """Energy and force errors on test frames (train/metrics.py)."""
        from ..train.metrics import energy_force_errors

        return energy_force_errors(model, path, frames, charge=charge, labels=labels)


def _new_trunk(state: dict, own: dict) -> bool:
    """The model has an energy trunk that the earlier weights lack."""
    return any(k.startswith("energy_interactions.") for k in own) and not any(
        k.startswith("energy_interactions.") for k in state)


def with_fast_steps(phase: TrainingPhase, fock_metrics: Callable = _fock_metrics_nan) -> TrainingPhase:
    """``phase`` with steps that run ``model(..., energy_only=True)``."""
    return dataclasses.replace(phase, energy_only=True, fock_metrics=fock_metrics)


# -- the energy trunk (config energy_layers), read by either path ---------------------------------------

def build_energy_trunk(model: nn.Module, cfg: dict) -> None:
    """``model.energy_embedding`` (n_elements, C_e), ``energy_interactions`` and ``energy_layout``, or None:
    the energy trunk beside the Fock trunk (same edge frames and radial basis, its own embedding and smaller
    features), so a stage that trains only the energy leaves F bit-identical and the force loss's second
    derivative never runs through the Fock trunk's weights."""
    from ..model.interaction import Interaction
    from ..model.layers import FeatureLayout

    if not cfg["energy_layers"]:
        model.energy_layout, model.energy_embedding, model.energy_interactions = None, None, None
        return
    n_el, Ce = len(cfg["elements"]), cfg["energy_channels"]
    model.energy_layout = FeatureLayout(cfg["energy_lmax"], cfg["parity"])
    model.energy_embedding = nn.Parameter(torch.randn(n_el, Ce))
    model.energy_interactions = nn.ModuleList([
        Interaction(model.energy_layout, Ce, cfg["num_radial"], cfg["radial_hidden"], cfg["avg_num_neighbors"], n_el)
        for _ in range(cfg["energy_layers"])])


def energy_trunk(model, ctx) -> list:
    """Every block output (N, D_e, C_e) of the energy trunk."""
    from ..model.interaction import run_blocks

    return run_blocks(model.energy_embedding, model.energy_interactions, model.energy_layout, ctx.ix, ctx.Ds,
                      ctx.edge_attr, ctx.env)


def single(x):
    """The one molecule's matrix from a model output ((1, nao, nao) tensor or a one-element list)."""
    if isinstance(x, (list, tuple)):
        if len(x) != 1:
            raise ValueError("expected one molecule")
        return x[0]
    return x[0] if x.dim() == 3 else x


def positions_tensor(positions_bohr, requires_grad: bool) -> torch.Tensor:
    """(n, 3) float64 positions (Bohr) as a leaf tensor."""
    return torch.tensor(np.asarray(positions_bohr, dtype=np.float64).reshape(-1, 3), requires_grad=requires_grad)
