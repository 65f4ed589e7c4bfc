"""No energy: a model that predicts the Hamiltonian only (F, hence orbitals, density, dipole, charges).

Config ``energy_path = "hamiltonian"`` without the Delta h head (``delta_hcore_head``), or any model whose
card says its energy was never trained (``energy_trained`` false: exported from a run without energy or
force terms). Its network has the per-element offsets e0 and nothing else of an energy; the provider
returns NaN energies and no gradient, and asking for them raises ``PropertyNotImplementedError``.
"""
from __future__ import annotations

from .base import EnergyPath, TrainingPhase

__all__ = ["NoEnergy"]


class NoEnergy(EnergyPath):
    name = "none"
    formula = "no energy: the model predicts F only (orbitals, density, dipole, charges)"
    phases = {"all": TrainingPhase("all", None)}

    # -- (a) the network: F and e0 only (e0 exists in every model, so any model's weights load)
    def check_config(self, cfg: dict) -> None:
        if cfg["atom_correction_hidden"]:
            raise ValueError("config 'atom_correction_hidden' > 0 needs delta_hcore_head = true")
        if cfg["energy_layers"]:
            raise ValueError("config 'energy_layers' > 0 needs atom_correction_hidden > 0 (the MLP that reads it)")
        super().check_config(cfg)

    # -- (b) the provider: F, orbitals, density; energy NaN, no gradient
    def compute(self, provider, numbers, positions_bohr, want_gradient: bool):
        return provider.fock_result(numbers, positions_bohr)

    def serves(self, cached, want_gradient: bool) -> bool:
        return True       # no gradient to come: the Hamiltonian is all there is

    def require_energy(self, provider) -> None:
        from ase.calculators.calculator import PropertyNotImplementedError

        raise PropertyNotImplementedError(
            f"model {provider.name!r} predicts the Hamiltonian only (no energy trained): energy and "
            f"forces are not available; orbitals, density, charges and dipole are")

    def hessian_energy(self, provider, numbers, pos):
        self.require_energy(provider)

    def warn_if_inaccurate(self, name: str, card: dict) -> None:
        pass              # no energies, nothing to warn about

    # -- (d) the model card
    def trained_by(self, loss: dict) -> EnergyPath:
        return self

    def card_entries(self) -> dict:
        return {"energy_trained": False, "energy_path": {"name": self.name, "formula": self.formula}}

    def levels_of_theory(self, level: dict, high_level: dict | None) -> dict:
        return {"energy_level_of_theory": level}     # no energies were trained, on any labels

    def refit_offsets(self, model, datasets, charge: int, labels):
        return None       # e0 is not part of any output of such a model

    def test_metrics(self, model, path, frames, charge: int, labels: str) -> dict:
        return {}

