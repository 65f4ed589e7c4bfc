"""Loss terms, registered by name, and their weighted sum.

The config's ``[loss]`` table maps term names to weights (and holds the options of ``LOSS_OPTIONS``,
e.g. ``gap_gate``); ``WeightedLoss`` evaluates the terms with a positive weight. A term is a function ``term(outputs, batch, cache) -> scalar tensor`` where ``outputs``
is the model's output dict, ``batch`` a :class:`~ase_wavecalc.train.data.Batch` and ``cache`` a dict
shared by the terms of one evaluation (so that e.g. ``energy`` and ``forces`` build the energy once).
New terms plug in with :func:`register_loss_term`; a term that needs d/dR declares
``needs_positions_grad=True`` and the trainer then makes the positions require grad before the forward.

| term | compares | unit of the value |
|---|---|---|
| fock_mse | all elements of F | Hartree^2 |
| fock_mae | all elements of F | Hartree |
| fock_orth_mse | all elements of X^T F X, X = S^-1/2 (F in an orthonormal basis) | Hartree^2 |
| orbital_energy | occupied eigenvalues of (F_pred, S) vs (F_ref, S), mean squared | Hartree^2 |
| energy | total energy: ``outputs["energy"]`` (energy_path "readout"), else ``ase_wavecalc.energy.total_energy`` (eigh density); mean squared | Hartree^2 |
| forces | its gradient w.r.t. positions vs the reference gradient, mean squared (structures without forces left out) | (Hartree/Bohr)^2 |
| forces_low | the same against the low-level gradient of a table trained on high-level labels | (Hartree/Bohr)^2 |

PhiSNet trains on MSE + MAE of F; the orbital-energy term sharpens the occupied spectrum, which errors
of F weigh unevenly. ``fock_orth_mse`` is the smooth alternative: an element error of F along a
near-linear-dependent AO combination (overlap eigenvalue s << 1) moves the orbital energies by ~error/s.
For ethanol/def2-SVP, s_min ~ 0.003: a model with a 5 mHa worst element error had 0.3-1.3 Ha errors in
the orthonormal basis and virtual levels falling into the HOMO-LUMO gap. By the Hoffman-Wielandt
inequality sum_k (eps_pred,k - eps_ref,k)^2 <= ||X^T (F_pred - F_ref) X||_F^2 for the sorted
eigenvalues, so this term bounds the error of every orbital energy, occupied or virtual, without the
discontinuities of an eigenvalue loss. Energy and forces need the dataset's ``e_tot``/``gradient`` (loaded on demand, see
``WeightedLoss.dataset_keys``; ``hcore`` lets the trainer start the per-element energy offsets from
the reference energies).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["LossTerm", "LOSS_TERMS", "register_loss_term", "WeightedLoss", "predicted_fock", "orthonormalizer"]


@dataclass(frozen=True)
class LossTerm:
    name: str
    fn: Callable
    unit: str
    needs_positions_grad: bool = False
    dataset_keys: tuple[str, ...] = ()   # extra dataset arrays the term reads (beyond fock/overlap)


LOSS_TERMS: dict[str, LossTerm] = {}


def register_loss_term(name: str, unit: str = "", needs_positions_grad: bool = False,
                       dataset_keys: tuple[str, ...] = ()):
    """Decorator: register ``fn(outputs, batch, cache) -> scalar`` as loss term ``name``."""
    def wrap(fn):
        if name in LOSS_TERMS:
            raise ValueError(f"loss term {name!r} is already registered")
        LOSS_TERMS[name] = LossTerm(name, fn, unit, needs_positions_grad, tuple(dataset_keys))
        return fn
    return wrap


def predicted_fock(outputs: dict) -> torch.Tensor:
    """The (B, nao, nao) predicted Fock tensor (batches never mix compositions)."""
    if "fock" not in outputs:
        raise KeyError("this loss term needs the Fock matrix, which an energy-correction-only forward "
                       "(run.trainable = 'atom_correction') does not compute: give the F terms weight 0")
    fock = outputs["fock"]
    if isinstance(fock, (list, tuple)):
        fock = torch.stack(list(fock))
    return fock


@register_loss_term("fock_mse", unit="Hartree^2")
def fock_mse(outputs, batch, cache):
    return (predicted_fock(outputs) - batch.fock).square().mean()


@register_loss_term("fock_mae", unit="Hartree")
def fock_mae(outputs, batch, cache):
    return (predicted_fock(outputs) - batch.fock).abs().mean()


def orthonormalizer(overlap: torch.Tensor) -> torch.Tensor:
    """(B, nao, nao) X = U s^-1/2 with S = U diag(s) U^T, so X^T S X = 1 (float64, no gradient).

    Any X with X^T S X = 1 gives the same Frobenius norm of X^T A X (they differ by an orthogonal
    matrix), so the canonical one is used.
    """
    s, u = torch.linalg.eigh(overlap.detach().double())
    if bool((s <= 0).any()):
        raise ValueError("overlap matrix is not positive definite")
    return u * s.rsqrt().unsqueeze(-2)


@register_loss_term("fock_orth_mse", unit="Hartree^2")
def fock_orth_mse(outputs, batch, cache):
    """Mean squared element of X^T (F_pred - F_ref) X, X = S^-1/2: F errors as the orbitals see them."""
    fock = predicted_fock(outputs)
    if "orthonormalizer" not in cache:
        cache["orthonormalizer"] = orthonormalizer(batch.overlap).to(fock.dtype)
    x = cache["orthonormalizer"]
    err = x.transpose(-1, -2) @ (fock - batch.fock) @ x
    return err.square().mean()


@register_loss_term("orbital_energy", unit="Hartree^2")
def orbital_energy(outputs, batch, cache):
    """Mean squared error of the occupied eigenvalues; the eigenproblem is solved in float64."""
    from ..electronic import solve_fock

    fock = predicted_fock(outputs)
    eps, _ = solve_fock(fock.double(), batch.overlap.double())
    n = batch.n_occ
    return (eps[..., :n] - batch.mo_energy[..., :n].double()).square().mean().to(fock.dtype)


#: a structure whose predicted HOMO-LUMO gap is below this fraction of the reference gap is left out of
#: the energy and force terms of that step (the F terms still see it), see :func:`energy_gate`; the
#: ``[loss]`` table may set it as ``gap_gate`` (0 disables the gate)
GAP_GATE_FRACTION = 0.5

#: keys of the ``[loss]`` table that are options, not term weights
LOSS_OPTIONS = {"gap_gate": GAP_GATE_FRACTION}


def gap_is_open(gap, ref_gap, fraction: float = GAP_GATE_FRACTION):
    """The gap gate of the energy and force terms (tensors or floats, Hartree): a predicted HOMO-LUMO gap
    above ``fraction`` x the reference gap (0 lets everything through)."""
    return gap > fraction * ref_gap


def energy_gate(outputs, batch, cache) -> torch.Tensor:
    """(B,) bool: structures whose predicted spectrum is fit for the energy and force terms.

    When a virtual level of the predicted (F, S) falls into or near the occupied manifold (this happens
    transiently while the weights move, most easily along near-linear-dependent AO combinations), the
    aufbau density fills the wrong orbital: the energy is off by a sizeable fraction of a Hartree and
    its weight gradient, which carries 1/gap, is orders of magnitude larger than that of every other
    structure. Such a structure would dominate the step and push F further away; the F terms alone bring
    it back. Criterion: predicted gap < ``GAP_GATE_FRACTION`` x the reference gap (from ``mo_energy``).
    """
    if "gate" not in cache and "energy" in outputs:
        # energy_path = "readout": the energy does not come from the spectrum, nothing to gate
        cache["gate"] = torch.ones(batch.n_structures, dtype=torch.bool, device=outputs["energy"].device)
    if "gate" not in cache and batch.base_energy is not None:
        # frozen Hamiltonian: its energies were computed once; NaN marks a structure it could not do
        cache["gate"] = torch.isfinite(batch.base_energy)
    if "gate" not in cache:
        from ..electronic import solve_fock

        n = batch.n_occ
        with torch.no_grad():
            eps, _ = solve_fock(predicted_fock(outputs).detach().double(), batch.overlap.double())
            gap = eps[..., n] - eps[..., n - 1]
            ref = batch.mo_energy.double()
            ref_gap = ref[..., n] - ref[..., n - 1]
        cache["gate"] = gap_is_open(gap, ref_gap, cache.get("gap_gate", GAP_GATE_FRACTION))
    return cache["gate"]


def predicted_energy(outputs, batch, cache) -> torch.Tensor:
    """(B,) total energies in Hartree (cached per evaluation); 0 where gated out.

    From the predicted F through :func:`ase_wavecalc.energy.total_energy`, or, when the batch carries a
    frozen Hamiltonian's precomputed ``base_energy``, as that plus ``outputs["atomic_energy_sum"]`` (e0 and
    the learned correction; the forces term adds ``base_gradient`` likewise)."""
    if "energy" not in cache and "energy" in outputs:
        # energy_path = "readout": the model's own total energy (e0 + MLP of the Fock trunk's invariants), in a
        # float32 network summed in float64 (float32 would round a total of 100-400 Hartree to 0.4-0.8 meV)
        cache["energy"] = (outputs["energy_offset_sum"] + outputs["learned_energy"].double()
                           if "energy_offset_sum" in outputs else outputs["energy"].double())
    if "energy" not in cache and batch.base_energy is not None:
        # energy = frozen Hamiltonian part (precomputed) + e0 + learned correction (atomic_energy_sum)
        base = torch.nan_to_num(batch.base_energy, nan=0.0)
        cache["energy"] = base + outputs["atomic_energy_sum"].double()
    if "energy" not in cache:
        from ..energy import total_energy

        fock = predicted_fock(outputs)
        delta_hcore = outputs.get("delta_hcore")
        atomic_energy_sum = outputs.get("atomic_energy_sum")
        gate = energy_gate(outputs, batch, cache)
        n = batch.n_atoms
        numbers = batch.numbers[:n].tolist()
        energies = []
        for b in range(batch.n_structures):
            pos = batch.positions_bohr[b * n:(b + 1) * n]
            if not bool(gate[b]):
                # a placeholder connected to the graph (zero gradient), masked by every term
                energies.append(pos.sum().double() * 0.0)
                continue
            e, _ = total_energy(numbers, pos, fock[b], batch.basis,
                                delta_hcore=None if delta_hcore is None else delta_hcore[b],
                                atomic_energy_sum=0.0 if atomic_energy_sum is None else atomic_energy_sum[b],
                                charge=batch.charge, density="eigh")
            energies.append(e)
        cache["energy"] = torch.stack(energies)
    return cache["energy"]


def _model_dtype(outputs) -> torch.dtype:
    return predicted_fock(outputs).dtype if "fock" in outputs else outputs["atomic_energy_sum"].dtype


def _gated_mean(sq_err: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Mean of (B, ...) squared errors over the structures where ``gate``; 0 if none (zero gradient)."""
    per_structure = sq_err.reshape(sq_err.shape[0], -1).mean(-1)
    kept = torch.where(gate, per_structure, torch.zeros_like(per_structure))
    return kept.sum() / max(int(gate.sum()), 1)


@register_loss_term("energy", unit="Hartree^2", dataset_keys=("e_tot", "hcore"))
def energy(outputs, batch, cache):
    # float64: total energies are ~100 Hartree, float32 would round them to ~10 micro-Hartree
    gate = energy_gate(outputs, batch, cache)
    err = predicted_energy(outputs, batch, cache) - batch.e_tot.double()
    return _gated_mean(err.square(), gate).to(_model_dtype(outputs))


def predicted_gradient(outputs, batch, cache) -> torch.Tensor:
    """(B, n, 3) dE/dR of the predicted energies in Hartree/Bohr (cached per evaluation)."""
    if "gradient" not in cache:
        if not batch.positions_bohr.requires_grad:
            raise RuntimeError("the forces loss needs positions_bohr.requires_grad before the model runs")
        e = predicted_energy(outputs, batch, cache)
        (grad,) = torch.autograd.grad(e.sum(), batch.positions_bohr, create_graph=torch.is_grad_enabled())
        grad = grad.reshape(batch.n_structures, batch.n_atoms, 3).double()
        if batch.base_gradient is not None:
            grad = grad + torch.nan_to_num(batch.base_gradient, nan=0.0)
        cache["gradient"] = grad
    return cache["gradient"]


def _gradient_error(outputs, batch, cache, reference):
    """Mean squared gradient error over the gated structures that have a reference (NaN rows: none)."""
    gate = energy_gate(outputs, batch, cache)
    ref = reference.double().reshape(batch.n_structures, -1)
    has = torch.isfinite(ref).all(dim=-1)
    err = predicted_gradient(outputs, batch, cache).reshape(batch.n_structures, -1) - torch.nan_to_num(ref)
    return _gated_mean(err.square(), gate & has).to(_model_dtype(outputs))


@register_loss_term("forces", unit="(Hartree/Bohr)^2", needs_positions_grad=True, dataset_keys=("gradient",))
def forces(outputs, batch, cache):
    return _gradient_error(outputs, batch, cache, batch.gradient)


@register_loss_term("forces_low", unit="(Hartree/Bohr)^2", needs_positions_grad=True, dataset_keys=("gradient",))
def forces_low(outputs, batch, cache):
    """Low-fidelity force term of transfer learning: the gradient against the dataset's own (low-level)
    forces on frames trained on high-level labels (multi-fidelity: high-level energies fix the energy
    scale, the low-level forces the shape of the surface where no high-level forces exist)."""
    if batch.low_gradient is None:
        raise RuntimeError("the forces_low term needs a dataset with labels = 'high' (low-level gradients)")
    return _gradient_error(outputs, batch, cache, batch.low_gradient)


class WeightedLoss:
    """sum_k w_k * term_k over the terms with w_k > 0.

    ``__call__`` returns ``(total, parts)``, ``parts`` the unweighted term values as floats.
    """

    def __init__(self, weights: dict[str, float]):
        self.options = {k: float(weights.get(k, v)) for k, v in LOSS_OPTIONS.items()}
        weights = {k: v for k, v in weights.items() if k not in LOSS_OPTIONS}
        unknown = [k for k in weights if k not in LOSS_TERMS]
        if unknown:
            raise KeyError(f"unknown loss terms {unknown}; known: {sorted(LOSS_TERMS)}")
        self.weights = {k: float(w) for k, w in weights.items() if float(w) > 0}
        if not self.weights:
            raise ValueError("no loss term has a positive weight")
        self.terms = [LOSS_TERMS[k] for k in self.weights]

    @property
    def needs_positions_grad(self) -> bool:
        return any(t.needs_positions_grad for t in self.terms)

    @property
    def dataset_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k for t in self.terms for k in t.dataset_keys))

    def __call__(self, outputs: dict, batch) -> tuple[torch.Tensor, dict[str, float]]:
        cache: dict = dict(self.options)
        total = 0.0
        parts = {}
        for term in self.terms:
            value = term.fn(outputs, batch, cache)
            parts[term.name] = float(value.detach())
            total = total + self.weights[term.name] * value
        return total, parts
