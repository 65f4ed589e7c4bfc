"""Hamiltonian providers: where :class:`~ase_wavecalc.WaveCalculator`'s Fock matrix, energy and gradient
come from (the interface is documented in :mod:`ase_wavecalc.providers.base`).

| module | contents |
|---|---|
| ``base.py`` | interface (docstring), ``HamiltonianResult``, ``HamiltonianProvider``, ``OutOfDomainError`` |
| ``pyscf_provider.py`` | ``PySCFProvider``: exact closed-shell SCF (RHF/RKS), analytic gradient and Hessian |
| ``model.py`` | ``ModelProvider``: a trained network; ``DeferredHamiltonianResult`` (readout-energy models) |
| ``fallback.py`` | ``ReferenceFallback`` (``out_of_domain="reference"``), ``reference_provider_for`` |
| ``refine.py`` | ``SCFRefinedProvider`` (``refine="scf"``): PySCF's SCF started from a model's density |
"""
from .base import HamiltonianProvider, HamiltonianResult, OutOfDomainError
from .fallback import ReferenceFallback, reference_provider_for
from .model import DeferredHamiltonianResult, ModelProvider
from .pyscf_provider import PySCFProvider
from .refine import SCFRefinedProvider

__all__ = ["HamiltonianResult", "HamiltonianProvider", "OutOfDomainError", "PySCFProvider", "ModelProvider",
           "DeferredHamiltonianResult", "ReferenceFallback", "reference_provider_for", "SCFRefinedProvider"]
