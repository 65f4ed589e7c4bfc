"""``wavecalc finetune BASE_MODEL CONFIG.toml [--out RUN_DIR] [--resume]``: train a shipped model further on
a higher level of theory (transfer learning).

The run is an ordinary ``wavecalc train`` run (checkpoints, ``--resume``, metrics, learning curve, then
``wavecalc export``) with these settings taken from BASE_MODEL rather than the config:

- ``run.init_weights`` = BASE_MODEL (a model or run directory);
- ``[model]`` = the base model's architecture, with the keys the config's [model] table sets on top (such
  as ``transfer_head = true``);
- ``run.refit_energy_offsets`` = true unless the config sets it: the per-element offsets e0 first absorb
  the (large, nearly per-element) difference between the two levels' total energies;
- ``run.trainable`` = "energy_readout" unless set: the Fock network stays the low-level one (orbitals,
  density, dipole unchanged), the energy path (energy trunk, readout MLP, e0) learns the high level.
  With ``trainable = "all"`` and F terms in [loss], the Fock network moves too, held near the low-level F
  by the F loss weight. ``trainable = "transfer_head"`` (with ``[model] transfer_head = true``) trains only
  a linear head on the network's invariants, fitted in closed form before the first step
  (``ase_wavecalc.train.transfer``): the data-efficient choice when the high level has energies only.

At least one dataset must train on high-level labels (``labels = "high"``, see ``ase_wavecalc.labels``).
Exit status as for ``wavecalc train``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli_train import add_cli_arguments as _train_arguments
from .cli_train import run_training

__all__ = ["add_cli_arguments", "cli_main", "finetune_config"]


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base", metavar="BASE_MODEL", help="model directory (or run directory) to start from")
    _train_arguments(parser)


def finetune_config(config, base: str | Path, raw: dict):
    """Fill ``config`` (a TrainConfig) with the settings that come from ``base``; ``raw`` is the parsed TOML
    (to tell which keys the user set). Returns the config."""
    from ..model.config import canonical_config
    from .config import ConfigError

    base = Path(base)
    card_path = base / "model.json"
    if not card_path.is_file() and not (base / "checkpoint.pt").is_file():
        raise ConfigError(f"BASE_MODEL {str(base)!r} is neither a model directory (model.json) nor a run "
                          "directory (checkpoint.pt)")
    set_run = raw.get("run", {})
    if set_run.get("init_weights") and Path(config.resolve_path(set_run["init_weights"])).resolve() != base.resolve():
        raise ConfigError(f"run.init_weights = {set_run['init_weights']!r} in the config contradicts "
                          f"BASE_MODEL {str(base)!r}; leave it out")
    config.run.init_weights = str(base)   # as given: relative paths stay relative in the card
    if "refit_energy_offsets" not in set_run:
        config.run.refit_energy_offsets = True
    if "trainable" not in set_run:
        config.run.trainable = "energy_readout"
    if card_path.is_file():
        base_model = dict(json.loads(card_path.read_text())["config"])
    else:
        import torch
        base_model = dict(torch.load(base / "checkpoint.pt", map_location="cpu", weights_only=True)["model_config"])
    # (key names of earlier versions in either under their names now, so that the config's keys win)
    config.model = {**canonical_config(base_model),
                    **canonical_config(dict(raw.get("model", {})))}   # e.g. [model] transfer_head = true
    if "committee_size" not in raw.get("model", {}) and int(config.model.get("committee_size") or 0) > 0:
        # the base's committee spreads over the base level's energies, not the new ones: it is left out
        # (`wavecalc committee` fits one on the high-level labels after export)
        print(f"finetune: the base model's committee of {config.model['committee_size']} is left out; fit one "
              "on the new labels with `wavecalc committee` after export", file=sys.stderr)
        config.model["committee_size"] = 0
    if not any(d.labels == "high" for d in config.data.datasets):
        raise ConfigError("finetune needs at least one dataset with labels = 'high' (high-level energies; "
                          "see `wavecalc import-npz` and `wavecalc generate --method ccsd(t)`)")
    config.source = ""   # the run's config.toml is the filled-in config, so --resume compares like with like
    return config


def cli_main(args) -> int:
    from .config import ConfigError, load_config

    try:
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        raw = tomllib.loads(Path(args.config).read_text())
        config = finetune_config(load_config(args.config), args.base, raw)
    except (ConfigError, OSError, KeyError) as exc:
        print(f"wavecalc finetune: error: {exc}", file=sys.stderr)
        return 1
    return run_training(config, args, "finetune")
