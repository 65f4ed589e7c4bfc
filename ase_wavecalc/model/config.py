"""The network's configuration: defaults, validation and resolution (``model.json``'s "config").

A config is a JSON-serializable dict; ``_resolve_config`` fills every key (``lmax`` from the basis) and
checks the combinations, so that the resolved dict alone determines the architecture.
"""
from __future__ import annotations

import copy
import difflib

from ..basis import BasisLayout

__all__ = ["CONFIG_ALIASES", "DEFAULT_CONFIG", "ENERGY_PATHS", "MODEL_TYPE", "OUTPUT_KEYS",
           "PARAMETER_ALIASES", "canonical_config", "canonical_state_dict", "default_config"]

MODEL_TYPE = "wavecalc-so2-hamiltonian"
#: how a model computes its total energy (config "energy_path"), see docs/design.md
ENERGY_PATHS = ("hamiltonian", "readout")

# Defaults: def2-SVP water/ethanol, trains on 2 CPU cores (see docs in the report / README)
DEFAULT_CONFIG = {
    "model_type": MODEL_TYPE,
    "basis": "def2-svp",
    "elements": [1, 6, 8],
    "channels": 24,              # C: channels of every irrep of the atom features
    "lmax": None,                # None: 2 * (highest l of the basis), 4 for def2-SVP
    "parity": True,              # E(3) (both parities) vs SE(3) (natural parity only, cheaper)
    "num_layers": 3,
    "cutoff": 10.0,              # Bohr, message passing
    "num_radial": 8,
    "radial_hidden": 32,
    "envelope_exponent": 6,
    "avg_num_neighbors": 6.0,    # messages are summed and divided by sqrt(this)
    "pair_channels": 24,
    "pair_layers": 0,            # extra edge-frame residual blocks on the pair features
    "pair_cutoff": 20.0,         # Bohr: off-diagonal blocks go smoothly to 0 beyond it
    "pair_num_radial": 12,
    "pair_hidden": 64,
    "delta_hcore_head": False,   # a second Fock-shaped readout head: "delta_hcore", a learned correction
                                 # Delta h to the core Hamiltonian (energy_path "hamiltonian" only)
    "atom_correction_hidden": 0,  # > 0: hidden width of the learned per-atom energy correction MLP of
                                  # invariant features (energy_path "hamiltonian"; needs delta_hcore_head)
    "energy_layers": 0,          # > 0: the correction reads its own message-passing trunk (below)
    "energy_channels": 32,       # channels of that trunk
    "energy_lmax": 2,            # highest L of its features
    "energy_path": "hamiltonian",  # "hamiltonian": E_nn + 1/2 Tr[P (F + h)] + e0 (+ correction);
                                   # "readout": e0 + an MLP of the Fock trunk's invariants (no eigh)
    "readout_hidden": 64,        # hidden width of the "readout" energy MLP
    "readout_standardize": False,  # shift and scale each invariant by training-set statistics (fixed buffers)
    "committee_size": 0,         # readout models: extra readout MLPs on the same invariants whose spread is the
                                 # uncertainty (energy_std, forces_std); fitted after training (train.committee)
    "transfer_head": False,      # readout models: + sum_A w[Z_A] . (standardized invariants of A), a linear
                                 # correction for a second level of theory (transfer learning, zero at start)
}


#: Every key the network's forward may return: name -> (shape, unit, meaning), B molecules, N atoms. Declared
#: once here; ``tests/test_model.py`` checks real outputs against it.
OUTPUT_KEYS: dict[str, tuple[str, str, str]] = {
    "fock": ("(B, nao, nao), or a list of (nao_b, nao_b) for mixed compositions", "Hartree",
             "the predicted Fock/KS matrix, PySCF AO order"),
    "delta_hcore": ("like fock", "Hartree", "Delta h, the learned correction added to the core Hamiltonian "
                    "h_core (delta_hcore_head, energy_path hamiltonian)"),
    "atomic_energy_sum": ("(B,)", "Hartree", "sum over the atoms of the per-element offsets e0[Z_A] plus "
                          "learned_energy (readout models: equals energy)"),
    "learned_energy": ("(B,)", "Hartree", "the learned per-atom energies summed over the atoms: the "
                       "correction MLP (atom_correction_hidden) or the readout MLP plus transfer_correction"),
    "energy": ("(B,)", "Hartree", "total energy (energy_path readout)"),
    "readout_inputs": ("(N, n_inv)", "mixed", "the invariants the readout reads, before standardization"),
    "energy_committee": ("(B, committee_size)", "Hartree", "total energies of the committee members"),
    "transfer_correction": ("(B,)", "Hartree", "the linear transfer head's part of energy"),
}


#: config keys of earlier versions -> their names now (model cards and train configs written before the
#: rename keep loading: ``canonical_config``)
CONFIG_ALIASES = {"energy_head": "delta_hcore_head", "atom_energy_hidden": "atom_correction_hidden"}

#: state_dict key prefixes of earlier versions -> their names now (``canonical_state_dict``)
PARAMETER_ALIASES = (("atom_energy_offsets", "element_energy_offsets"),
                     ("atom_energy_mlp.", "atom_correction_mlp."))


def canonical_config(config: dict) -> dict:
    """A shallow copy of ``config`` with the keys of ``CONFIG_ALIASES`` renamed; a config that gives an old
    key and its new name with different values is an error."""
    out = dict(config)
    for old, new in CONFIG_ALIASES.items():
        if old not in out:
            continue
        value = out.pop(old)
        if new in out and out[new] != value:
            raise ValueError(f"model config gives both {old!r} = {value!r} and its new name {new!r} = "
                             f"{out[new]!r}: keep {new!r} only")
        out.setdefault(new, value)
    return out


def canonical_state_dict(state: dict, prefix: str = "") -> dict:
    """``state`` (a model's state_dict) with parameter names of earlier versions renamed
    (``PARAMETER_ALIASES``), in its key order; keys under other prefixes than ``prefix`` are left alone.
    Both an old name and its new one is an error."""
    out = {}
    for key, value in state.items():
        new_key = key
        for old, new in PARAMETER_ALIASES:
            if key.startswith(prefix + old):
                new_key = prefix + new + key[len(prefix + old):]
                break
        if new_key != key and new_key in state:
            raise ValueError(f"state_dict holds both {key!r} and its new name {new_key!r}")
        out[new_key] = value
    return out


def default_config(**overrides) -> dict:
    """A copy of ``DEFAULT_CONFIG`` with ``overrides`` applied (unknown keys are errors; old key names of
    ``CONFIG_ALIASES`` are accepted and renamed)."""
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    overrides = canonical_config(overrides)
    _check_keys(overrides)
    cfg.update(copy.deepcopy(overrides))
    return cfg


def _check_keys(config: dict) -> None:
    for key in config:
        if key not in DEFAULT_CONFIG:
            hint = difflib.get_close_matches(key, DEFAULT_CONFIG, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"unknown model config key {key!r}{extra}")


def _resolve_config(config: dict) -> dict:
    config = canonical_config(config)
    _check_keys(config)
    cfg = copy.deepcopy(DEFAULT_CONFIG)
    cfg.update(copy.deepcopy(config))
    if cfg["model_type"] != MODEL_TYPE:
        raise ValueError(f"model_type {cfg['model_type']!r} is not {MODEL_TYPE!r}")
    cfg["basis"] = str(cfg["basis"]).lower()
    elements = sorted({int(z) for z in cfg["elements"]})
    if not elements:
        raise ValueError("config 'elements' is empty")
    cfg["elements"] = elements
    layout = BasisLayout(cfg["basis"], elements)  # raises for elements the basis lacks
    if cfg["lmax"] is None:
        cfg["lmax"] = 2 * layout.max_l
    cfg["lmax"] = int(cfg["lmax"])
    if cfg["lmax"] < 2 * layout.max_l:
        raise ValueError(f"lmax={cfg['lmax']} is too small for {cfg['basis']}: blocks need L up to "
                         f"{2 * layout.max_l}")
    for key in ("channels", "num_layers", "num_radial", "radial_hidden", "pair_channels", "pair_num_radial",
                "pair_hidden", "envelope_exponent"):
        cfg[key] = int(cfg[key])
        if cfg[key] < (0 if key == "num_layers" else 1):
            raise ValueError(f"config {key!r} must be positive")
    cfg["pair_layers"] = int(cfg["pair_layers"])
    for key in ("cutoff", "pair_cutoff", "avg_num_neighbors"):
        cfg[key] = float(cfg[key])
        if cfg[key] <= 0:
            raise ValueError(f"config {key!r} must be positive")
    cfg["parity"] = bool(cfg["parity"])
    cfg["delta_hcore_head"] = bool(cfg["delta_hcore_head"])
    cfg["atom_correction_hidden"] = int(cfg["atom_correction_hidden"])
    if cfg["atom_correction_hidden"] < 0:
        raise ValueError("config 'atom_correction_hidden' must be >= 0")
    for key in ("energy_layers", "energy_channels", "energy_lmax"):
        cfg[key] = int(cfg[key])
        if cfg[key] < 0 or (key != "energy_layers" and cfg[key] < 1):
            raise ValueError(f"config {key!r} must be {'>= 0' if key == 'energy_layers' else 'positive'}")
    if cfg["energy_layers"] and cfg["energy_lmax"] > cfg["lmax"]:
        raise ValueError(f"config 'energy_lmax' ({cfg['energy_lmax']}) cannot exceed lmax ({cfg['lmax']})")
    cfg["energy_path"] = str(cfg["energy_path"]).lower()
    if cfg["energy_path"] not in ENERGY_PATHS:
        raise ValueError(f"config 'energy_path' must be one of {list(ENERGY_PATHS)}, got {cfg['energy_path']!r}")
    cfg["readout_hidden"] = int(cfg["readout_hidden"])
    cfg["readout_standardize"] = bool(cfg["readout_standardize"])
    cfg["committee_size"] = int(cfg["committee_size"])
    cfg["transfer_head"] = bool(cfg["transfer_head"])
    # what the model's energy path needs of the config (energy_paths/: each path checks its own keys)
    from ..energy_paths import energy_path_for

    energy_path_for(cfg).check_config(cfg)
    return cfg
