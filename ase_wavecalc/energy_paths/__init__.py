"""How a model computes its energy, as one object per way: the energy path, selected once from the model's
config (and card) by :func:`energy_path_for`; nobody downstream asks the config again.

| path (name) | module | energy | selected when |
|---|---|---|---|
| ``ReadoutEnergy`` ("readout") | ``readout.py`` | sum_A e0[Z_A] + MLP of the trunks' atom invariants (no F needed) | config ``energy_path = "readout"`` |
| ``HamiltonianEnergy`` ("hamiltonian") | ``hamiltonian.py`` | E_nn + 1/2 Tr[P (F + h + Delta h)] + sum_A e0[Z_A] (+ correction) | config ``energy_path = "hamiltonian"`` with ``delta_hcore_head`` |
| ``NoEnergy`` ("none") | ``no_energy.py`` | none: F only | ``"hamiltonian"`` without the Delta h head, or a card with ``energy_trained`` false |

Each owns (``base.py``): (a) its modules in the network (``build``, ``outputs``, ``energy_only_outputs``),
(b) its energy, gradient, Hessian energy and committee spread for ``providers.ModelProvider``, (c) its
training phases (``phase(run.trainable, loss weights)`` -> ``TrainingPhase``: which weights learn, how a step
runs), (d) its model-card entry (``card_entries``).

```python
path = energy_path_for(model.config)                 # or energy_path_for(card["config"], card)
path.phase("energy_readout", {"energy": 1.0}).freeze(model)   # the weights that phase trains, the others frozen
```
"""
from __future__ import annotations

from .base import EnergyPath, TrainingPhase
from .hamiltonian import HamiltonianEnergy
from .no_energy import NoEnergy
from .readout import ReadoutEnergy

__all__ = ["ENERGY_PATHS", "EnergyPath", "HamiltonianEnergy", "LEARNED_ENERGY_PREFIXES", "NO_ENERGY", "NoEnergy",
           "PHASES", "ReadoutEnergy", "TrainingPhase", "energy_path_for", "energy_path_named"]

READOUT, HAMILTONIAN, NO_ENERGY = ReadoutEnergy(), HamiltonianEnergy(), NoEnergy()
#: every path by name (the card's ``energy_path.name``)
ENERGY_PATHS: dict[str, EnergyPath] = {p.name: p for p in (READOUT, HAMILTONIAN, NO_ENERGY)}
#: every ``run.trainable`` value some path has
PHASES = tuple(dict.fromkeys(name for p in ENERGY_PATHS.values() for name in p.phases))
#: parameter-name prefixes of the learned energy parts of any path besides e0 (earlier weights may hold them)
LEARNED_ENERGY_PREFIXES = tuple(dict.fromkeys(k for p in (HAMILTONIAN, READOUT) for k in p.learned_prefixes))


def energy_path_named(name: str) -> EnergyPath:
    """The path of a card's ``energy_path.name``."""
    try:
        return ENERGY_PATHS[name]
    except KeyError:
        raise ValueError(f"unknown energy path {name!r}; known: {sorted(ENERGY_PATHS)}") from None


def energy_path_for(config: dict, card: dict | None = None) -> EnergyPath:
    """The energy path of a model config (old key names accepted): ``energy_path`` "readout" -> readout;
    "hamiltonian" -> the Hamiltonian path with the Delta h head (``delta_hcore_head``), else no energy. A
    ``card`` whose ``energy_trained`` is false (exported from a run without energy terms) -> no energy."""
    from ..model.config import ENERGY_PATHS as CONFIG_NAMES, canonical_config

    cfg = canonical_config(config)
    name = str(cfg.get("energy_path", "hamiltonian")).lower()
    if name not in CONFIG_NAMES:
        raise ValueError(f"config 'energy_path' must be one of {list(CONFIG_NAMES)}, got {name!r}")
    if card is not None and not bool(card.get("energy_trained", True)):
        return NO_ENERGY
    if name == "readout":
        return READOUT
    return HAMILTONIAN if bool(cfg.get("delta_hcore_head", False)) else NO_ENERGY
