"""The trained network as a Hamiltonian provider for :class:`~ase_wavecalc.WaveCalculator`.

``ModelProvider(model)`` loads a shipped model (name) or a model directory and implements the provider
interface of :mod:`ase_wavecalc.providers.base`: F from the network, S from PySCF integrals, orbitals and
density from F C = S C eps; the energy, gradient, Hessian and committee spread are the model's energy path's
(:mod:`ase_wavecalc.energy_paths`, selected once from the model's config and card): the readout path's
energy without F (F, orbitals and density deferred, :class:`DeferredHamiltonianResult`), the Hamiltonian
path's E_nn + 1/2 Tr[P (F + h + Delta h)] + e0 with its exact gradient (autograd through the network,
PySCF's analytic derivatives of S and h_core, and the degeneracy-safe density-matrix response), or no
energy (F only). The readout path computes its energy and gradient through ``self.fast`` (``model/fast.py``,
made by the path from the ``fast``/``compile`` options) unless that is off.

The network may run in float32 for speed (``dtype="float32"``); the electronic-structure part (eigenproblem,
traces, energy) always runs in float64, so the absolute energy keeps its precision.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from ase.calculators.calculator import PropertyNotImplementedError

from .. import integrals
from ..energy_paths import energy_path_for
from ..energy_paths.base import positions_tensor, single
from ..units import BOHR, HARTREE
from .base import HamiltonianProvider, HamiltonianResult, OutOfDomainError

HARTREE_MEV = HARTREE * 1e3

__all__ = ["ModelProvider", "DeferredHamiltonianResult", "OutOfDomainError", "warn_if_inaccurate"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


class ModelProvider(HamiltonianProvider):
    """Hamiltonian (and energy/forces) from a trained equivariant network.

    Parameters
    ----------
    model: a shipped model name (``models/NAME``), a model directory, or an in-memory
        ``HamiltonianModel`` (then ``card`` describes it).
    dtype: "float64" (default; MD energy conservation) or "float32" for the network.
    charge: must be the charge the model was trained for (its card's ``charge``, default 0).
    fast: energy and forces of a readout model through ``model.fast.FastReadoutEnergy`` (the same function,
        built once per molecule): "float64" (default here: the eager network's values to rounding),
        "float32" (also True; ``WaveCalculator``'s default) or None/False for the eager network in ``dtype``.
        F, orbitals, the Hessian and ``forces_std`` always use the eager network.
    compile: torch.compile of that fast path (``model/compiled.py``): False (default), True (at a molecule's
        first call, minutes) or "auto" (in the background after a molecule's first hundreds of calls).
    device: where the network (eager and fast) runs: "cpu" (default), "cuda", "cuda:N" or a ``torch.device``
        (``devices.resolve_device``: ``DeviceError``, a ValueError, without CUDA). Inputs are moved there and
        the network's outputs back to the CPU, where the electronic-structure numerics stay (float64).
    """

    def __init__(self, model, dtype: str = "float64", charge: int | None = None, card: dict | None = None,
                 fast="float64", compile=False, device=None):
        from ..devices import resolve_device
        from ..model.io import load_model

        self.device = resolve_device(device)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        self.dtype = _DTYPES[dtype]
        if isinstance(model, torch.nn.Module):
            # the caller's module is never changed: used as it is when it already has the dtype and is in
            # eval mode (then changes made to it in place are seen, see the cache key), else a copy
            dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
            devices = {p.device for p in model.parameters()}
            if dtypes != {self.dtype} or model.training or devices - {self.device}:
                import copy

                model = copy.deepcopy(model).to(dtype=self.dtype).eval().to(self.device)
            self.model, self.card = model, dict(card or {})
            self.name = self.card.get("name", type(model).__name__)
        else:
            self.model, self.card = load_model(model, dtype=self.dtype)
            self.model.to(self.device)   # loaded on the CPU (safetensors), wherever it was trained
            self.name = str(model)
            self.model.eval()
        config = getattr(self.model, "config", None) or self.card.get("config", {})
        self.basis = str(config["basis"])
        self.elements = frozenset(int(z) for z in config["elements"])
        trained_charge = int(self.card.get("charge", 0))
        if charge is not None and int(charge) != trained_charge:
            raise ValueError(f"model {self.name!r} was trained for charge {trained_charge}, not {charge}")
        self.charge = trained_charge
        self._domain_warned = set()   # kinds of pair-distance warnings given (domain.pair_distances)
        #: how the energy is computed (ase_wavecalc.energy_paths): from the config, and no energy when the
        #: card says none was trained
        self.energy_path = energy_path_for(config, self.card)
        self._cache = None            # (key, result) of the last geometry
        #: the fast energy+forces function of the path (model/fast.py; ``.available`` False: the eager network),
        #: chosen by the path from the fast/compile options and used by its ``compute``
        self.fast = self.energy_path.fast_path(self.model, fast, compile)
        self.energy_path.warn_if_inaccurate(self.name, self.card)

    def __getstate__(self):
        """Pickling (multiprocessing, ASE's parallel tools): without the last geometry's result, whose
        deferred parts hold the autograd graph; an unpickled provider computes it again when asked."""
        return {**self.__dict__, "_cache": None}

    def describe(self) -> dict:
        return {"provider": "ModelProvider", "model": self.name, "basis": self.basis,
                "level_of_theory": self.card.get("level_of_theory"), "dtype": str(self.dtype).split(".")[-1],
                "charge": self.charge, "fast": self.fast.mode if self.fast.available else None,
                "device": str(self.device)}

    def forward(self, numbers, positions, energy_only: bool = False) -> dict:
        """The eager network at one geometry on ``self.device``: ``positions`` (n, 3) Bohr (a CPU tensor, may
        require grad) -> the model's outputs on the CPU (the moves are differentiable)."""
        from ..devices import to_cpu

        z = torch.as_tensor(np.asarray(numbers), dtype=torch.long, device=self.device)
        kw = {"energy_only": True} if energy_only else {}
        out = self.model(z, positions.to(device=self.device, dtype=self.dtype), None, **kw)
        return out if self.device.type == "cpu" else to_cpu(out)

    def check_training_domain(self, numbers, positions_bohr, strict: bool = False) -> None:
        """Compare the geometry with the training data recorded in the card's ``training_domain`` (written
        by ``wavecalc export``; keys a card lacks are not checked), raising ``OutOfDomainError`` (an
        ``InputError``) outside it.

        First, in both modes: a molecule whose composition or covalent bonds are not those of any training
        frame (another molecule, an isomer, a broken bond; :func:`ase_wavecalc.domain.outside`) raises.
        Then the pair distances (:func:`ase_wavecalc.domain.pair_distances`): a pair closer than
        ``EXTRAPOLATION_ERROR`` (0.8) x the shortest training distance of its element pair, or a bond
        longer than ``STRETCH_ERROR`` (1.1) x the longest training bond, raises: the network has never seen
        anything like it, and its Hamiltonian (hence energy and forces) can be arbitrarily wrong (a
        diverging optimizer or a saddle search is the usual way to get there). 0.05 Angstrom past the
        training range (closer or longer) warns, once per provider for each of the two kinds. ``strict``:
        any pair closer than the training minimum or bond longer than the training maximum raises (what
        :mod:`~ase_wavecalc.providers.fallback` uses to hand such geometries to the reference before the
        model's extrapolation can accelerate the atoms).
        """
        import warnings

        from ..domain import outside, pair_distances

        numbers = np.asarray(numbers, dtype=int).reshape(-1)
        pos = np.asarray(positions_bohr, dtype=float).reshape(-1, 3) * BOHR
        recorded = self.card.get("training_domain") or {}
        reason = outside(recorded, numbers, pos, self.name)
        if reason is None:
            reason, warned = pair_distances(recorded, numbers, pos, self.name, strict=strict)
        if reason is not None:
            raise OutOfDomainError(reason)
        for kind, text in warned.items():
            if kind not in self._domain_warned:
                self._domain_warned.add(kind)
                warnings.warn(f"{text} (warned once)", UserWarning, stacklevel=4)

    def compute(self, numbers, positions_bohr, want_gradient: bool = False) -> HamiltonianResult:
        """F, S, orbitals, density; energy (Hartree) and gradient (Hartree/Bohr) for energy models.

        The last geometry's result is cached (an energy call then a forces call at the same positions run
        the network once more only for the gradient). With energy_path "readout" the energy and gradient
        come from the atom trunk alone and the Hamiltonian, orbitals and density are computed when first
        asked for (:class:`DeferredHamiltonianResult`), so an MD step does not pay for them."""
        numbers = np.asarray(numbers, dtype=int).reshape(-1)
        positions_bohr = np.asarray(positions_bohr, dtype=np.float64).reshape(-1, 3)
        # the weights' in-place version counters: a model changed in place is not served stale results
        key = (numbers.tobytes(), positions_bohr.tobytes(), self.fast.weights_version())
        if self._cache is not None and self._cache[0] == key and self.energy_path.serves(self._cache[1],
                                                                                         want_gradient):
            return self._cache[1]
        self.check_training_domain(numbers, positions_bohr)
        result = self.energy_path.compute(self, numbers, positions_bohr, want_gradient)
        self._cache = (key, result)
        return result

    def uncertainty(self, numbers, positions_bohr) -> dict:
        """Committee spread at a geometry: {"energy_std": Hartree, "gradient_std": (n, 3) Hartree/Bohr}
        (the standard deviation over the members, per component). Needs a model with a committee (else
        ``PropertyNotImplementedError``)."""
        return self.energy_path.uncertainty(self, numbers, positions_bohr)

    def check_uncertainty(self, energy_std: float) -> None:
        """Early warning of the out-of-domain policy: energy_std above the card's threshold (calibrated on
        validation frames, train/committee.py) warns once and is counted in ``n_uncertain``."""
        limit = (self.card.get("committee") or {}).get("energy_std_warning_mev")
        if limit is None or energy_std * HARTREE_MEV <= float(limit):
            return
        self.n_uncertain = getattr(self, "n_uncertain", 0) + 1
        if not getattr(self, "_uncertainty_warned", False):
            import warnings

            self._uncertainty_warned = True
            warnings.warn(f"model {self.name!r}: committee energy spread {energy_std * HARTREE_MEV:.1f} meV is above "
                          f"{float(limit):.1f} meV (3x the 99th percentile on validation frames): the geometry is "
                          "leaving the training data (warned once; count in calc.provider.n_uncertain)",
                          UserWarning, stacklevel=5)

    def hessian(self, numbers, positions_bohr) -> np.ndarray:
        """(3n, 3n) second derivatives of the energy, Hartree/Bohr^2, by double autograd through the
        energy path (exact and symmetric). Readout models differentiate the atom trunks and the MLP; the
        Hamiltonian path uses the second-derivative integrals and eigh's twice-differentiable density."""
        self.require_energy()
        numbers = np.asarray(numbers, dtype=int).reshape(-1)
        self.check_training_domain(numbers, positions_bohr)
        pos = positions_tensor(positions_bohr, requires_grad=True)
        e_tot = self.energy_path.hessian_energy(self, numbers, pos)
        (grad,) = torch.autograd.grad(e_tot, pos, create_graph=True)
        grad = grad.reshape(-1)
        try:   # all 3n rows in one batched (vmapped) backward pass
            eye = torch.eye(len(grad), dtype=grad.dtype)
            (hess,) = torch.autograd.grad(grad, pos, grad_outputs=eye, is_grads_batched=True, retain_graph=True)
            hess = hess.reshape(len(grad), -1).detach().numpy()
        except RuntimeError:   # an operation without a batching rule: one row at a time
            rows = [torch.autograd.grad(grad[i], pos, retain_graph=i + 1 < len(grad))[0].reshape(-1)
                    for i in range(len(grad))]
            hess = torch.stack(rows).detach().numpy()
        return 0.5 * (hess + hess.T)

    def require_hamiltonian(self):
        """Raise ``PropertyNotImplementedError`` for a network trained on energies and forces only (card
        ``fock_trained`` false, e.g. an MLIP baseline): its F was never trained."""
        if self.card.get("fock_trained") is False:
            raise PropertyNotImplementedError(
                f"model {self.name!r} was trained on energies and forces only: it has no trained Hamiltonian, so "
                "no orbitals, density, dipole or charges")

    def fock_result(self, numbers, positions_bohr, energy=None, want_gradient: bool = False) -> HamiltonianResult:
        """F from the network, S, orbitals and density at one geometry (the predicted gap checked). The energy
        is NaN, or ``energy(out, positions, fock, mol) -> (e_tot, overlap, hcore)``: the energy path's
        energy from the same forward (then with its gradient when ``want_gradient``)."""
        self.require_hamiltonian()
        start = time.perf_counter()
        want_energy_grad = want_gradient and energy is not None
        pos64 = positions_tensor(positions_bohr, requires_grad=want_energy_grad)
        with torch.set_grad_enabled(want_energy_grad):
            out = self.forward(numbers, pos64)
            fock = single(out["fock"]).to(torch.float64)
            mol = integrals.make_mol(numbers, pos64.detach().numpy(), self.basis, charge=self.charge)
            gradient = None
            if energy is not None:
                e_tot, overlap, hcore = energy(out, pos64, fock, mol)
                if want_energy_grad:
                    (gradient,) = torch.autograd.grad(e_tot, pos64)
                e_value = e_tot.detach()
            else:
                overlap = torch.as_tensor(integrals.overlap(mol))
                hcore = None
                e_value = float("nan")
        result = HamiltonianResult.from_fock(mol, fock.detach(), overlap.detach(), e_value,
                                             gradient=None if gradient is None else gradient.detach(),
                                             hcore=None if hcore is None else hcore.detach(),
                                             info={"seconds": time.perf_counter() - start, "model": self.name})
        self.check_gap(result.mo_energy, mol.nelectron // 2)
        return result

    def check_gap(self, mo_energy, n_occ: int) -> None:
        """InputError when the predicted HOMO-LUMO gap is below ``GAP_ERROR_FRACTION`` x the smallest gap
        of the training data (card's ``training_domain.min_homo_lumo_gap_eV``; models without it are not
        checked). A virtual level falling towards the occupied ones is how a network Hamiltonian fails
        outside its data; the density response (forces) then diverges, so no number is returned."""
        from ..units import HARTREE

        smallest = (self.card.get("training_domain") or {}).get("min_homo_lumo_gap_eV")
        if smallest is None or not 0 < n_occ < len(mo_energy):
            return
        gap = float(mo_energy[n_occ] - mo_energy[n_occ - 1]) * HARTREE
        if gap < GAP_ERROR_FRACTION * float(smallest):
            raise OutOfDomainError(f"model {self.name!r} predicts a HOMO-LUMO gap of {gap:.2f} eV here, far below "
                             f"every training geometry's ({float(smallest):.2f} eV and up): its Hamiltonian is "
                             "extrapolating (a virtual level fell towards the occupied ones), so energies and "
                             "forces would be wrong")

    def require_energy(self):
        """Raise ``PropertyNotImplementedError`` if the model predicts only the Hamiltonian."""
        self.energy_path.require_energy(self)


# geometry checks against the card's training_domain (see ModelProvider.check_training_domain; the pair
# distance limits are domain.EXTRAPOLATION_ERROR, EXTRAPOLATION_WARNING, STRETCH_ERROR, STRETCH_WARNING)
GAP_ERROR_FRACTION = 0.7      # predicted HOMO-LUMO gap below this x the smallest training gap: InputError

# held-out test errors (model card) above which energies and forces are flagged as semi-quantitative
ACCURACY_WARNING = {"energy_mae_mev": 50.0, "force_mae_mev_a": 150.0}


def warn_if_inaccurate(name: str, metrics: dict) -> None:
    """A UserWarning when the card's held-out energy or force error is large (the user should know)."""
    import warnings

    bad = {k: float(metrics[k]) for k, limit in ACCURACY_WARNING.items()
           if metrics.get(k) is not None and float(metrics[k]) > limit}
    if bad:
        text = ", ".join(f"{k.split('_mae')[0]} MAE {v:.0f} {'meV' if k.startswith('energy') else 'meV/A'}"
                         for k, v in bad.items())
        warnings.warn(f"model {name!r}: held-out test {text} (model card): its energies and forces are "
                      f"semi-quantitative; orbitals, density and dipole are its stronger outputs",
                      UserWarning, stacklevel=4)


class DeferredHamiltonianResult:
    """A readout-energy model's result: ``energy`` (Hartree), ``gradient`` (n, 3) Hartree/Bohr or None and
    ``info`` at once; every other :class:`~ase_wavecalc.providers.HamiltonianResult` field (F, S, orbitals,
    density, mol) is computed by ``build()`` on first access and kept. ``build`` may raise
    ``OutOfDomainError`` (a collapsed predicted gap): the energy does not depend on the spectrum, the
    orbitals do."""

    def __init__(self, energy: float, gradient, info: dict, build):
        self.energy, self.gradient, self.info = float(energy), gradient, info
        self._build, self._full = build, None

    @property
    def materialized(self) -> bool:
        """Whether the Hamiltonian and orbitals have been computed."""
        return self._full is not None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._full is None:
            full = self._build()
            full.info.update(self.info)
            self._full = full
        return getattr(self._full, name)
