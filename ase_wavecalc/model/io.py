"""Save and load trained models: ``weights.safetensors`` + ``model.json`` (the model card).

Loading never executes code: the weights are read with safetensors (no pickle) and the architecture is
rebuilt from the card's ``config`` by :func:`ase_wavecalc.model.build_model`. Files written before the
rename of the energy parts (config keys ``energy_head``/``atom_energy_hidden``, parameters
``atom_energy_offsets``/``atom_energy_mlp.*``) load unchanged: ``config.canonical_config`` and
``config.canonical_state_dict`` map the old names to the new ones. The card is JSON:

| key | meaning |
|---|---|
| format_version | integer, this module's ``FORMAT_VERSION`` when written |
| model_type | ``network.MODEL_TYPE`` |
| config | the fully resolved model config (architecture; basis, elements, cutoffs in Bohr, ...) |
| basis, elements | copies of config["basis"] / config["elements"], checked against it on load |
| dtype | dtype the weights were saved in ("float32" / "float64") |
| weights_sha256 | checksum of weights.safetensors, checked on load |
| versions | ase_wavecalc, torch, e3nn versions that wrote the files |
| level_of_theory | the reference the Fock matrices (orbitals, density) were trained on |
| energy_level_of_theory | the labels the energies were trained on: ``level_of_theory``, or a higher level for a \
transfer model (:func:`energy_labels`) |
| anything else | what the caller put in ``card`` (training data, method/xc, metrics, units, ...) |

A model is named either by a directory path or by the NAME of a folder shipped in the package
``ase_wavecalc.models`` (the repository's top-level ``models/`` folder).
"""
from __future__ import annotations

import copy
import hashlib
import importlib.resources
import json
import os
from pathlib import Path

import torch

__all__ = ["save_model", "load_model", "energy_labels", "ModelFileError", "FORMAT_VERSION", "WEIGHTS_FILE", "CARD_FILE",
           "available_models"]

FORMAT_VERSION = 2
# 2: the SO(2) path matrices of so2.SO2Conv are a canonical basis (so2._canonical_basis); version-1
#    files hold weights for the basis LAPACK happened to return, which changes with thread count and CPU
WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "model.json"


class ModelFileError(ValueError):
    """A model directory that cannot be loaded as written (missing, corrupt or inconsistent files)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict:
    import e3nn

    from .._version import __version__

    return {"ase_wavecalc": __version__, "torch": torch.__version__.split("+")[0], "e3nn": e3nn.__version__}


def _same_elements(a, b) -> bool:
    try:
        return sorted(int(z) for z in a) == sorted(int(z) for z in b)
    except (TypeError, ValueError):
        return False


def save_model(model, directory, card: dict | None = None) -> Path:
    """Write ``model`` to ``directory`` (created if needed); returns the directory.

    ``card``: JSON-serializable metadata to keep with the weights; ``config``, ``format_version``,
    ``model_type``, ``basis``, ``elements``, ``dtype``, ``weights_sha256`` and ``versions`` are filled in
    (a ``basis``/``elements`` in ``card`` that disagrees with the model is an error). Files are written to
    temporary names and renamed, so an interrupted save never leaves a half-written model behind.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    card = copy.deepcopy(dict(card or {}))
    config = copy.deepcopy(model.config)
    if "basis" in card and str(card["basis"]).lower() != config["basis"]:
        raise ValueError(f"card basis {card['basis']!r} differs from the model's {config['basis']!r}")
    if "elements" in card and not _same_elements(card["elements"], config["elements"]):
        raise ValueError(f"card elements {card['elements']} differ from the model's {config['elements']}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    dtypes = {str(v.dtype).replace("torch.", "") for v in tensors.values() if v.is_floating_point()}
    card.update({
        "format_version": FORMAT_VERSION,
        "model_type": config["model_type"],
        "basis": config["basis"],
        "elements": list(config["elements"]),
        "dtype": dtypes.pop() if len(dtypes) == 1 else "mixed",
        "versions": _versions(),
        "config": config,
    })
    tmp_w = directory / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp_w), metadata={"format_version": str(FORMAT_VERSION)})
    card["weights_sha256"] = _sha256(tmp_w)
    try:
        text = json.dumps(card, indent=2, sort_keys=False)
    except TypeError as exc:
        tmp_w.unlink(missing_ok=True)
        raise ValueError(f"model card is not JSON-serializable: {exc}") from exc
    tmp_c = directory / (CARD_FILE + ".tmp")
    tmp_c.write_text(text + "\n")
    os.replace(tmp_w, directory / WEIGHTS_FILE)
    os.replace(tmp_c, directory / CARD_FILE)
    return directory


def available_models() -> list[str]:
    """Names of the models shipped in ``ase_wavecalc.models``."""
    try:
        root = importlib.resources.files("ase_wavecalc.models")
    except ModuleNotFoundError:
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / CARD_FILE).is_file())


def _resolve(name_or_path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path)
    if os.sep not in name and "/" not in name and name not in (".", ".."):
        try:
            candidate = importlib.resources.files("ase_wavecalc.models") / name
            if candidate.is_dir():
                return Path(str(candidate))
        except ModuleNotFoundError:
            pass
    shipped = available_models()
    raise ModelFileError(f"no model directory {str(name_or_path)!r} (neither a path nor a shipped model; "
                         f"shipped models: {', '.join(shipped) if shipped else 'none'})")


def _read_card(path: Path) -> dict:
    card_file = path / CARD_FILE
    if not card_file.is_file():
        raise ModelFileError(f"{card_file} is missing")
    try:
        card = json.loads(card_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{card_file} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict):
        raise ModelFileError(f"{card_file} must hold a JSON object")
    version = card.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{card_file}: 'format_version' missing or not an integer")
    if version < 2:
        raise ModelFileError(f"{card_file}: format_version {version} predates the canonical SO(2) path basis: "
                             "its weights belong to a basis that depended on the machine's LAPACK and thread "
                             "count, and would give wrong results here; convert or re-export the model")
    if version > FORMAT_VERSION:
        raise ModelFileError(f"{card_file}: format_version {version} is newer than this ase-wavecalc "
                             f"understands ({FORMAT_VERSION}); upgrade ase-wavecalc")
    config = card.get("config")
    if not isinstance(config, dict):
        raise ModelFileError(f"{card_file}: 'config' missing or not an object")
    for key in ("basis", "elements"):
        if key not in config:
            raise ModelFileError(f"{card_file}: config has no {key!r}")
    if "basis" in card and str(card["basis"]).lower() != str(config["basis"]).lower():
        raise ModelFileError(f"{card_file}: basis {card['basis']!r} disagrees with config basis "
                             f"{config['basis']!r}")
    if "elements" in card and not _same_elements(card["elements"], config["elements"]):
        raise ModelFileError(f"{card_file}: elements {card['elements']} disagree with config elements "
                             f"{config['elements']}")
    legacy = card.pop("hamiltonian_level_of_theory", None)   # a duplicate older transfer exports wrote
    if legacy is not None and legacy != card.get("level_of_theory"):
        raise ModelFileError(f"{card_file}: 'hamiltonian_level_of_theory' disagrees with 'level_of_theory'")
    return card


def energy_labels(card: dict) -> str:
    """Which labels a model's energies were trained on: ``"high"`` (a transfer model, whose
    ``energy_level_of_theory`` is not its Hamiltonian's) or ``"reference"``."""
    level = card.get("level_of_theory")
    energy = card.get("energy_level_of_theory")
    return "high" if energy is not None and level is not None and energy != level else "reference"


def load_model(name_or_path, dtype: torch.dtype = torch.float64):
    """Load a saved model -> ``(model, card)``; the model is in eval mode and in ``dtype``.

    Raises :class:`ModelFileError` (a ``ValueError``) for a missing directory or file, an unreadable or
    tampered weights file (checksum), a card that is not valid JSON, or a card whose basis/elements are
    inconsistent with its config or with the weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .config import canonical_state_dict
    from .network import build_model

    path = _resolve(name_or_path)
    card = _read_card(path)
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"{weights} is missing")
    expected = card.get("weights_sha256")
    if expected is not None and _sha256(weights) != expected:
        raise ModelFileError(f"{weights} is corrupt or was modified: its SHA-256 does not match the one "
                             f"recorded in {CARD_FILE}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{weights} is not a readable safetensors file: {exc}") from exc
    try:   # parameter names of earlier versions (config.PARAMETER_ALIASES) under their names now
        tensors = canonical_state_dict(tensors)
    except ValueError as exc:
        raise ModelFileError(f"{weights}: {exc}") from exc
    try:
        with torch.random.fork_rng(devices=[]):  # building initializes weights: keep the caller's RNG
            model = build_model(card["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path / CARD_FILE}: config cannot build a model: {exc}") from exc
    model.to(dtype)
    state = model.state_dict()
    missing = sorted(set(state) - set(tensors))
    unexpected = sorted(set(tensors) - set(state))
    if missing or unexpected:
        raise ModelFileError(f"{weights} does not match the card's architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(state[key].shape):
            raise ModelFileError(f"{weights}: tensor {key!r} has shape {tuple(value.shape)}, the card's "
                                 f"architecture needs {tuple(state[key].shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelFileError(f"{weights}: tensor {key!r} holds NaN or inf")
    model.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()}, strict=True)
    model.eval()
    return model, card
