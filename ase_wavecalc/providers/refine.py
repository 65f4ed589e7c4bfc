"""``refine="scf"``: exact DFT at the model's level of theory, started from the model's predicted density.

A model predicts F in one forward pass; its density matrix P (aufbau occupation of F C = S C eps) is
close to the converged one, so a PySCF SCF started from it needs few cycles. ``SCFRefinedProvider``
returns PySCF's converged results (energy, forces, orbitals, density, dipole and charges are then exact
at the model's level, to ``conv_tol``) and records in ``info``: ``scf_cycles`` (PySCF's count),
``initial_guess`` ("model density"), ``model_seconds`` and ``scf_seconds``. An SCF that does not converge
raises ``CalculationFailed``, as for the plain PySCF provider. Where the model refuses the geometry
(``OutOfDomainError``: another molecule, broken bonds, atoms closer than in training), the SCF starts from
PySCF's default guess (``initial_guess`` "default", the reason in ``model_refused``; warned once).

Every capability of the provider interface is forwarded: energy, forces, Hamiltonian, orbitals and the
analytic Hessian are the SCF's; ``uncertainty`` (energy_std, forces_std) is the model's committee spread at
the geometry (how far it lies from the model's training data; the SCF's numbers themselves are exact at the
model's level); the card and ``check_training_domain`` are the model's (the provider itself computes every
geometry, refused ones from PySCF's guess).

The level of theory comes from the model card (``fallback.reference_provider_for``); a transfer-learned
model, whose energies are trained on another level than its Hamiltonian, is refused: refining would return
the Hamiltonian's level's energy under the model's name.
"""
from __future__ import annotations

import time
import warnings

from .base import HamiltonianProvider, HamiltonianResult, OutOfDomainError
from .fallback import reference_provider_for

__all__ = ["SCFRefinedProvider"]


class SCFRefinedProvider(HamiltonianProvider):
    """PySCF SCF at a model's level of theory from the model's predicted density (module docstring).

    Parameters
    ----------
    model: a :class:`~ase_wavecalc.providers.ModelProvider` whose F was trained (``fock_trained``).
    conv_tol: SCF energy tolerance in Hartree (default: the model card's, else 1e-10).
    max_cycle: SCF iterations before ``CalculationFailed``.
    """

    def __init__(self, model, conv_tol: float | None = None, max_cycle: int = 100):
        if not getattr(model, "card", {}).get("fock_trained", True):
            raise ValueError(f"model {model.name!r} was not trained on F (an energy-only network): it has no "
                             "density to start an SCF from")
        self.model = model
        self.scf = reference_provider_for(model.card, model.charge)   # ValueError: level unknown or mixed
        if conv_tol is not None:
            self.scf.conv_tol = float(conv_tol)
        self.scf.max_cycle = int(max_cycle)
        self.scf.reuse_density = False        # every geometry starts from the model, never from the last SCF
        self.basis, self.elements, self.charge = model.basis, model.elements, model.charge
        self.name = f"{model.name} + SCF"
        self._warned = False
        self.card = model.card

    def require_energy(self) -> None:
        """The SCF always has an energy."""

    def check_training_domain(self, numbers, positions_bohr, strict: bool = False) -> None:
        """The model's training domain (the SCF computes outside it too, from PySCF's guess)."""
        self.model.check_training_domain(numbers, positions_bohr, strict=strict)

    def uncertainty(self, numbers, positions_bohr) -> dict:
        """The model's committee spread at the geometry (``PropertyNotImplementedError`` without a committee)."""
        return self.model.uncertainty(numbers, positions_bohr)

    def describe(self) -> dict:
        return {"provider": "SCFRefinedProvider", "model": self.model.describe(), "scf": self.scf.describe()}

    def compute(self, numbers, positions_bohr, want_gradient: bool = False) -> HamiltonianResult:
        t0 = time.perf_counter()
        try:
            dm0 = self.model.compute(numbers, positions_bohr, want_gradient=False).dm   # a deferred result builds P
        except OutOfDomainError as exc:
            # the result is PySCF's either way: a molecule or geometry the model refuses starts from PySCF's
            # default guess instead of failing
            dm0, refused = None, str(exc)
            if not self._warned:
                self._warned = True
                warnings.warn(f"{refused}; refine='scf' starts PySCF from its default guess there (warned once)",
                              UserWarning, stacklevel=4)
        else:
            refused = None
        t_model = time.perf_counter() - t0
        result = self.scf.compute(numbers, positions_bohr, want_gradient=want_gradient, dm0=dm0,
                                  guess_name="model density")
        result.info["model_seconds"] = t_model
        if refused is not None:
            result.info["model_refused"] = refused
        return result

    def hessian(self, numbers, positions_bohr):
        """PySCF's analytic Hessian at the converged SCF."""
        self.compute(numbers, positions_bohr)
        return self.scf.hessian(numbers, positions_bohr)
