"""ase-wavecalc: an ASE calculator from an SE(3)-equivariant Hamiltonian network.

``from ase_wavecalc import WaveCalculator`` is the public entry point. Heavy modules are imported
lazily so that ``wavecalc --help`` and the basis utilities start fast.
"""
from ._version import __version__

__all__ = ["WaveCalculator", "__version__"]


def __getattr__(name):
    if name == "WaveCalculator":
        from .calculator import WaveCalculator
        return WaveCalculator
    raise AttributeError(f"module 'ase_wavecalc' has no attribute {name!r}")
