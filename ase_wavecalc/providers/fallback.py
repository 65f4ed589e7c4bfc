"""Geometries a model refuses, computed with the reference method instead (opt-in).

A trained model refuses geometries outside its training data (``OutOfDomainError``: another molecule or
other covalent bonds than in training, an atom pair far closer or a bond far longer than in any training
frame, or a predicted HOMO-LUMO gap far below every training gap). By default the calculator raises, and
an MD run or optimization stops there. ``ReferenceFallback`` hands every such molecule, and every geometry
with an atom pair closer or a bond longer than anywhere in the training data (earlier than the model's own
refusal), to the reference method the model was trained on (PySCF at the level of theory in its model
card) and the model keeps everything else, so a long MD run goes on through the steps where the model
would extrapolate in a pair distance; every such step costs a full SCF (seconds, not milliseconds).
A collapsed predicted gap still raises: in ethanol MD it comes after the model's energy has fallen into
a hole for several steps (kinetic temperature in the thousands of K), so the run is already off and
handing it to the reference would only hide that.

What changes at a switch: the energy jumps by the model's error there (for ethanol ~0.2 eV at the edge of
its data), so NVE energy conservation breaks at each switch; and where the model's energy slopes down
towards the edge, every return from the reference gains kinetic energy, so a thermostatted run that
switches often is hotter than its bath (``benchmarks/md_stability.py`` reports both). ``n_reference`` counts the geometries computed
by the reference, and ``log`` (an ASE trajectory path) collects them with their reference energy and
forces: exactly the frames to add to training (label them with ``wavecalc generate LOG --geometries``).

Every capability of the provider interface is forwarded: inside the domain the model's energy, forces,
Hamiltonian, Hessian and committee spread (``uncertainty``); outside it the reference's energy, forces,
Hamiltonian and analytic Hessian (no committee spread there: ``PropertyNotImplementedError``); the card,
the domain checks and ``require_energy`` are the model's.
"""
from __future__ import annotations

import warnings

import numpy as np

from ase.calculators.calculator import PropertyNotImplementedError

from .base import HamiltonianProvider, HamiltonianResult, OutOfDomainError
from .pyscf_provider import PySCFProvider

__all__ = ["ReferenceFallback", "reference_provider_for"]


def reference_provider_for(card: dict, charge: int = 0) -> PySCFProvider:
    """A PySCF provider at the level of theory of a model card (``level_of_theory``: xc ("hf" for RHF),
    basis, grid_level, conv_tol). ValueError when the card does not say what the model was trained on."""
    level = card.get("level_of_theory") or {}
    energy_level = card.get("energy_level_of_theory")
    if energy_level and str(energy_level.get("method", "")).lower() != str(level.get("method", "")).lower():
        raise ValueError(f"the model's energies are trained on {energy_level.get('method')}/"
                         f"{energy_level.get('basis')}, its Hamiltonian on {level.get('xc') or level.get('method')}/"
                         f"{level.get('basis')}: a fallback to the latter would mix two potential energy surfaces "
                         "in one run")
    basis = level.get("basis") or card.get("basis")
    method = level.get("xc") or level.get("method")
    if not method or basis is None:
        raise ValueError("the model card has no level_of_theory: the reference method is unknown")
    grid_level = level.get("grid_level")           # None for RHF
    return PySCFProvider(method=method, basis=basis, charge=charge,
                         grid_level=3 if grid_level is None else int(grid_level),
                         conv_tol=float(level.get("conv_tol") or 1e-10), conv_tol_grad=level.get("conv_tol_grad"))


class ReferenceFallback(HamiltonianProvider):
    """The model's results inside its domain, the reference method's outside it.

    Parameters
    ----------
    model: a :class:`~ase_wavecalc.providers.ModelProvider`.
    reference: the provider for refused geometries (default: PySCF at the model card's level of theory).
    log: an ASE trajectory file; each geometry computed by the reference is appended (positions in
        Angstrom, reference energy in eV and forces in eV/Angstrom); an existing file grows.
    """

    def __init__(self, model, reference: HamiltonianProvider | None = None, log: str | None = None):
        try:
            model.require_energy()
        except PropertyNotImplementedError:
            raise ValueError(f"model {model.name!r} predicts the Hamiltonian only: with no energies of its own, "
                             "an MD run could not go on after a step computed by the reference") from None
        self.model = model
        self.reference = reference if reference is not None else reference_provider_for(model.card, model.charge)
        self.basis, self.elements, self.charge = model.basis, model.elements, model.charge
        self.log = None if log is None else str(log)
        self.n_reference = 0          # geometries computed by the reference
        self.last_reason = None       # why the model refused the last one it refused
        self._last_key = None         # the last geometry the reference computed
        self._warned = False

    def describe(self) -> dict:
        return {"provider": "ReferenceFallback", "model": self.model.describe(),
                "reference": self.reference.describe(), "reference_geometries": self.n_reference}

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def card(self) -> dict:
        return self.model.card

    def require_energy(self):
        self.model.require_energy()

    def check_training_domain(self, numbers, positions_bohr, strict: bool = False) -> None:
        """The model's training domain."""
        self.model.check_training_domain(numbers, positions_bohr, strict=strict)

    def _inside(self, numbers, positions_bohr) -> bool:
        """Whether the model computes this geometry: strictly inside its training domain (a pair closer or a
        bond longer than anywhere in training already goes to the reference: the model itself only refuses
        far beyond that, and in MD its last steps before a refusal can already have accelerated the atoms
        into a hole of its energy). Outside, ``last_reason`` says why."""
        try:
            self.model.check_training_domain(numbers, positions_bohr, strict=True)
        except OutOfDomainError as exc:
            self.last_reason = str(exc)
            return False
        return True

    def hessian(self, numbers, positions_bohr) -> np.ndarray:
        """The model's Hessian inside its domain, the reference's analytic Hessian outside it."""
        if self._inside(numbers, positions_bohr):
            return self.model.hessian(numbers, positions_bohr)
        return self.reference.hessian(numbers, positions_bohr)

    def uncertainty(self, numbers, positions_bohr) -> dict:
        """The model's committee spread inside its domain. Outside it ``PropertyNotImplementedError``: the
        numbers there are the reference's, and a committee spread describes the model's."""
        if self._inside(numbers, positions_bohr):
            return self.model.uncertainty(numbers, positions_bohr)
        raise PropertyNotImplementedError(f"{self.last_reason}: computed with the reference "
                                          f"({_label(self.reference)}), which has no committee spread")

    def compute(self, numbers, positions_bohr, want_gradient: bool = False) -> HamiltonianResult:
        """The model's result, or the reference's for a molecule or bonds the model was not trained on and
        where a pair is closer or a bond longer than in any training frame (a
        collapsed predicted gap, also ``OutOfDomainError``, is raised: see the module docstring)."""
        if self._inside(numbers, positions_bohr):
            # a collapsed predicted gap still raises: it comes only after the model's energy has fallen
            # into a hole for several steps, so an MD run reaching it is already off (too hot)
            result = self.model.compute(numbers, positions_bohr, want_gradient)
            result.info["computed_by"] = "model"
            return result
        # with a log, the forces too (the SCF is cached; a logged frame should carry them)
        result = self.reference.compute(numbers, positions_bohr, want_gradient or self.log is not None)
        result.info.update({"computed_by": "reference", "out_of_domain": self.last_reason})
        key = (tuple(int(z) for z in np.asarray(numbers).reshape(-1)),
               np.asarray(positions_bohr, dtype=float).tobytes())
        if key != self._last_key:
            self.n_reference += 1
            self._last_key = key
            if not self._warned:
                self._warned = True
                warnings.warn(f"{self.last_reason}; computed with the reference ({_label(self.reference)}) instead (warned "
                              f"once; the calculator's provider counts these in n_reference)", UserWarning,
                              stacklevel=3)
            if self.log is not None:      # once per geometry (an MD step asks for energy and forces at once)
                self._write_log(numbers, positions_bohr, result)
        return result

    def _write_log(self, numbers, positions_bohr, result: HamiltonianResult) -> None:
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import Trajectory

        from ..units import bohr_to_angstrom, gradient_au_to_forces_ev, hartree_to_ev

        atoms = Atoms(numbers=np.asarray(numbers).reshape(-1),
                      positions=bohr_to_angstrom(np.asarray(positions_bohr, dtype=float).reshape(-1, 3)))
        forces = None if result.gradient is None else gradient_au_to_forces_ev(np.asarray(result.gradient))
        atoms.calc = SinglePointCalculator(atoms, energy=hartree_to_ev(float(result.energy)), forces=forces)
        with Trajectory(self.log, "a") as traj:     # opened per frame: an interrupted run keeps every frame
            traj.write(atoms)


def _label(provider) -> str:
    d = provider.describe()
    return " ".join(str(d[k]) for k in ("method", "basis") if d.get(k)) or type(provider).__name__
