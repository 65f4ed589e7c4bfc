"""The Hamiltonian provider interface: where the Fock matrix (and the energy and its gradient) come from.

A provider is an object with the interface ``Provider`` (a ``typing.Protocol``: every capability the
calculator asks a provider for; atomic units inside, PySCF spherical AO order)::

    provider.basis      str           basis set name, e.g. "def2-svp"
    provider.elements   frozenset[int] | None   atomic numbers it can handle (None: any the basis has)
    provider.charge     int           total molecular charge it computes with
    provider.card       dict | None   the model card of a trained model (None: an exact method)
    provider.compute(numbers (n,), positions_bohr (n, 3), want_gradient: bool) -> HamiltonianResult
                                      energy, gradient (forces), Hamiltonian, orbitals, density
    provider.hessian(numbers, positions_bohr) -> (3n, 3n) Hartree/Bohr^2
    provider.uncertainty(numbers, positions_bohr) -> {"energy_std": Hartree, "gradient_std": (n, 3) Hartree/Bohr}
    provider.check_training_domain(numbers, positions_bohr, strict=False)   OutOfDomainError outside it
    provider.require_energy()         PropertyNotImplementedError (with the reason) if it has no energies
    provider.describe() -> dict       JSON-serializable settings (method, basis, ...)

``HamiltonianProvider`` is the base class that implements the capabilities a provider may lack (no Hessian,
no uncertainty: ``PropertyNotImplementedError``; no training domain; energies available), so a provider
subclassing it writes ``compute`` (and what else it has). ``compute`` may raise
``ase.calculators.calculator.CalculationFailed`` (e.g. SCF not converged), and a model provider
``OutOfDomainError`` (an ``InputError``) for a geometry outside its training data. Calling it again with the
positions of the previous call must be cheap (cached), so that a gradient asked for after an energy does not
redo the SCF. A provider that wraps another (``ReferenceFallback``, ``SCFRefinedProvider``) forwards every
capability.

| provider | source of F |
|---|---|
| PySCFProvider | exact closed-shell SCF (RHF or RKS with any xc functional) + analytic gradient and Hessian
  (``providers/pyscf_provider.py``) |
| ModelProvider | a trained equivariant network (``providers/model.py``; energy, gradient, Hessian and
  uncertainty are its energy path's, ``ase_wavecalc.energy_paths``; energy NaN and gradient None for a
  Hamiltonian-only model, whose ``require_energy()`` raises ``PropertyNotImplementedError``) |
| ReferenceFallback | the model inside its training domain, PySCF outside (``providers/fallback.py``) |
| SCFRefinedProvider | PySCF's SCF started from the model's density (``providers/refine.py``) |

HamiltonianResult fields
------------------------
| field | shape | unit |
|---|---|---|
| fock | (nao, nao) | Hartree (F of the converged density; for a model: the prediction) |
| overlap | (nao, nao) | - |
| energy | () float | Hartree (total energy, nuclear repulsion included) |
| mo_energy | (nmo,) | Hartree, ascending (eigenvalues of F C = S C eps) |
| mo_coeff | (nao, nmo) | - (columns, C^T S C = 1) |
| mo_occ | (nmo,) | electrons (2 or 0: closed shell) |
| dm | (nao, nao) | - (P = C n C^T, trace(P S) = number of electrons) |
| mol | pyscf.gto.Mole | Bohr (for integrals: dipole, density on a grid) |
| hcore | (nao, nao) or None | Hartree |
| gradient | (n, 3) or None | Hartree/Bohr (dE/dR; None when not asked for) |
| info | dict | free-form diagnostics (scf_cycles, seconds, converged, ...) |
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from ase.calculators.calculator import InputError, PropertyNotImplementedError

from ..validation import n_occupied

__all__ = ["CAPABILITIES", "HamiltonianResult", "HamiltonianProvider", "OutOfDomainError", "Provider",
           "missing_capabilities"]


class OutOfDomainError(InputError):
    """The geometry is outside what the model was trained on (another molecule or other covalent bonds than
    in training, an atom pair far closer or a bond far longer than in any training frame, or a predicted
    HOMO-LUMO gap far below every training gap): no model number is returned.
    An ``InputError``, so ASE code that catches those catches it; ``out_of_domain="reference"`` of
    :class:`~ase_wavecalc.WaveCalculator` computes such geometries with the reference method instead, which
    the message says."""

    HINT = ("; WaveCalculator(model=..., out_of_domain=\"reference\") computes such geometries with the "
            "reference method (PySCF) instead")

    def __init__(self, reason: str):
        super().__init__(reason + self.HINT)


@dataclass
class HamiltonianResult:
    """One Hamiltonian and what follows from it, atomic units, PySCF AO order (table in module doc)."""

    fock: np.ndarray
    overlap: np.ndarray
    energy: float
    mo_energy: np.ndarray
    mo_coeff: np.ndarray
    mo_occ: np.ndarray
    dm: np.ndarray
    mol: object
    hcore: np.ndarray | None = None
    gradient: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def n_occ(self) -> int:
        """Number of doubly occupied orbitals."""
        return int(np.count_nonzero(self.mo_occ > 0))

    @classmethod
    def from_fock(cls, mol, fock, overlap, energy, gradient=None, hcore=None, info=None):
        """Fill in orbitals, occupations and density from F and S (closed shell, aufbau).

        Convenience for providers that predict F (such as a trained network): solves F C = S C eps
        with :func:`ase_wavecalc.electronic.solve_fock` and occupies the ``mol.nelectron // 2``
        lowest orbitals. Inputs may be numpy arrays or torch tensors (they are detached).
        """
        import torch

        from .. import electronic

        def arr(x):
            if x is None:
                return None
            if torch.is_tensor(x):
                x = x.detach().cpu().numpy()
            return np.asarray(x, dtype=np.float64)

        fock, overlap = arr(fock), arr(overlap)
        n_occ = n_occupied(None, mol=mol)
        mo_energy, mo_coeff = electronic.solve_fock(torch.from_numpy(fock), torch.from_numpy(overlap))
        mo_occ = electronic.occupations(mo_energy.shape[-1], n_occ)
        dm = electronic.density_matrix(mo_coeff, mo_occ)
        return cls(fock=fock, overlap=overlap, energy=float(arr(energy)), mo_energy=mo_energy.numpy(),
                   mo_coeff=mo_coeff.numpy(), mo_occ=mo_occ.numpy(), dm=dm.numpy(), mol=mol,
                   hcore=arr(hcore), gradient=arr(gradient), info=dict(info or {}))


@runtime_checkable
class Provider(Protocol):
    """Every capability of a Hamiltonian provider (module docstring); ``HamiltonianProvider`` implements the
    optional ones."""

    basis: str
    elements: frozenset | None
    charge: int
    card: dict | None

    def compute(self, numbers, positions_bohr, want_gradient: bool = False) -> HamiltonianResult:
        """Energy (Hartree), gradient (Hartree/Bohr, when asked for), F, S, orbitals, density at one geometry."""

    def hessian(self, numbers, positions_bohr) -> np.ndarray:
        """(3n, 3n) second derivatives of the energy, Hartree/Bohr^2."""

    def uncertainty(self, numbers, positions_bohr) -> dict:
        """{"energy_std": Hartree, "gradient_std": (n, 3) Hartree/Bohr}: the spread of the energy and forces."""

    def check_training_domain(self, numbers, positions_bohr, strict: bool = False) -> None:
        """``OutOfDomainError`` for a geometry outside what the provider covers."""

    def require_energy(self) -> None:
        """``PropertyNotImplementedError`` (with the reason) when the provider has no energies."""

    def describe(self) -> dict:
        """JSON-serializable settings."""


#: the members of ``Provider``: what a wrapper provider forwards
CAPABILITIES = ("basis", "elements", "charge", "card", "compute", "hessian", "uncertainty", "check_training_domain",
                "require_energy", "describe")


def missing_capabilities(obj) -> list[str]:
    """The members of ``Provider`` that ``obj`` lacks (empty: it is a provider)."""
    return [name for name in CAPABILITIES if not hasattr(obj, name)]


class HamiltonianProvider(ABC):
    """Base class of providers: implements ``Provider``'s optional capabilities as absent (no Hessian, no
    uncertainty, no training domain, energies available); subclasses write ``compute`` and what they have."""

    basis: str = ""
    elements: frozenset | None = None
    charge: int = 0
    card: dict | None = None

    @abstractmethod
    def compute(self, numbers, positions_bohr, want_gradient: bool = False) -> HamiltonianResult:
        raise NotImplementedError

    def hessian(self, numbers, positions_bohr) -> np.ndarray:
        raise PropertyNotImplementedError(f"{self!r} has no Hessian")

    def uncertainty(self, numbers, positions_bohr) -> dict:
        raise PropertyNotImplementedError(f"{self!r} has no committee: no energy_std or forces_std")

    def check_training_domain(self, numbers, positions_bohr, strict: bool = False) -> None:
        """An exact method has no training domain: every geometry is inside."""

    def require_energy(self) -> None:
        """Energies are available."""

    def describe(self) -> dict:
        return {"provider": type(self).__name__, "basis": self.basis, "charge": self.charge}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.describe().items() if k != "provider")
        return f"{type(self).__name__}({args})"
