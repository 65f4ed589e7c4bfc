"""``wavecalc export RUN_DIR models/NAME [--test]``: a training run -> a shipped model.

Writes the EMA weights (of the best validation epoch by default) with ``model.io.save_model`` and a
JSON model card: architecture config, level of theory and basis, elements, datasets with sha256, the
split (counts, seed, test frame ids), training time and epochs, and with ``--test`` the metrics on the
held-out test split. The training config is copied beside it as ``train_config.toml``.

Multi-stage training (each stage's ``run.init_weights`` names the previous run directory) is followed back
to its first stage: every stage's config, metrics CSV and learning curve are copied beside the model as
``train_config_<run>.toml``, ``metrics_<run>.csv``, ``learning_curve_<run>.png``, and the card lists the
stages (``training_stages``: epochs, time, best epoch and its validation errors) in training order.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

__all__ = ["add_cli_arguments", "cli_main", "export_run", "load_run_model", "run_split_tables", "training_domain",
           "training_stages"]


# dataset metadata copied into the card's "level_of_theory"
LEVEL_OF_THEORY_KEYS = ("method", "xc", "basis", "grid_level", "conv_tol", "pyscf_version")


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run directory (holds checkpoint.pt)")
    parser.add_argument("out", metavar="models/NAME", help="directory of the exported model")
    parser.add_argument("--test", action="store_true",
                        help="evaluate on the run's held-out test split and put the metrics in the card")
    parser.add_argument("--weights", choices=("best", "last"), default="best",
                        help="EMA weights of the best validation epoch (default) or of the last checkpoint")
    parser.add_argument("--batch-size", type=int, default=16, help="structures per batch for --test")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")
    parser.add_argument("--refit-frames", type=int, default=400, metavar="N",
                        help="energy models: refit the per-element energy offsets by least squares on N "
                             "training frames before testing (0: keep the trained offsets)")


def load_run_model(run_dir, weights: str = "best", build_model=None):
    """(model, info) from a run directory: the EMA weights of best.pt or checkpoint.pt, in the run's dtype.

    ``info``: model_config, dtype, epoch/step of the weights, the checkpoint's progress dict and config.
    """
    from .checkpoint import load_best, load_checkpoint

    if build_model is None:
        from ..model import build_model
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    best_path = run_dir / "best.pt"
    if weights == "best" and best_path.is_file():
        best = load_best(best_path)
        state, epoch, step, source = best["model"], best["epoch"], best["step"], "best"
    else:
        state = ckpt["ema"]["module"] if ckpt.get("ema") is not None else ckpt["model"]
        epoch, step, source = ckpt["progress"]["epoch"], ckpt["progress"]["step"], "last"
    dtype = torch.float64 if ckpt["dtype"] == "float64" else torch.float32
    model = build_model(dict(ckpt["model_config"])).to(dtype)
    model.load_state_dict(state)
    model.eval()
    info = {"model_config": ckpt["model_config"], "dtype": ckpt["dtype"], "epoch": int(epoch),
            "step": int(step), "weights": source, "progress": ckpt["progress"], "config": ckpt["config"]}
    return model, info


def run_split_tables(run_dir, split: str = "test", check_hash: bool = True):
    """(tables, row sets, split dict) for one split of a run, read from its split.json."""
    from .data import load_table

    info = json.loads((Path(run_dir) / "split.json").read_text())
    tables, rows = [], []
    for entry in info["datasets"]:
        path = Path(entry.get("resolved_path", entry["path"]))
        if not path.is_file():
            path = Path(entry["path"])
        table = load_table(path, sha256=check_hash, labels=entry.get("labels", "reference"))
        if check_hash and table.sha256 != entry["sha256"]:
            print(f"warning: {path} changed since training (sha256 differs); using the saved frame ids",
                  file=sys.stderr)
        tables.append(table)
        rows.append(table.rows_of_frames(entry[split]))
    return tables, rows, info


def build_card(run_dir, info: dict, split: dict, dataset_meta: dict, test_metrics: dict | None) -> dict:
    """The model card (JSON-serializable). ``model.io.save_model`` adds config (the architecture),
    model_type, dtype, weights_sha256 and versions."""
    from ase.data import chemical_symbols

    cfg = info["model_config"]
    elements = [int(z) for z in cfg.get("elements", [])]
    progress, train_cfg = info["progress"], info["config"]
    return {
        "name": None,  # filled by export_run
        "level_of_theory": {k: dataset_meta[k] for k in LEVEL_OF_THEORY_KEYS if k in dataset_meta},
        "basis": dataset_meta.get("basis", cfg.get("basis")),
        "elements": elements,
        "element_symbols": [chemical_symbols[z] for z in elements],
        "units": {"fock": "Hartree", "positions": "Bohr", "energy": "Hartree"},
        "datasets": [{"name": Path(d["path"]).name, "sha256": d["sha256"], "n_frames": d["n_frames"],
                      "formula": d.get("formula")} for d in split["datasets"]],
        "split": {"seed": split["seed"],
                  "datasets": [{"name": Path(d["path"]).name, "sha256": d["sha256"], **d["counts"],
                                "test_frames": d["test"]} for d in split["datasets"]]},
        "training": {"epochs": progress["epoch"], "steps": progress["step"],
                     "train_time_s": round(float(progress["train_time_s"]), 1),
                     "weights": f"EMA, {info['weights']} (epoch {info['epoch']}, step {info['step']})",
                     "best_epoch": progress["best_epoch"],
                     "best_val_loss": progress["best_val_loss"] if math.isfinite(progress["best_val_loss"])
                     else None,
                     "loss": train_cfg["loss"], "optimizer": train_cfg["optimizer"],
                     "scheduler": train_cfg["scheduler"], "precision": train_cfg["run"]["precision"],
                     "batch_size": train_cfg["run"]["batch_size"],
                     "init_weights": train_cfg["run"].get("init_weights") or None},
        "test_metrics": test_metrics,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def training_domain(tables, row_sets) -> dict:
    """The geometries a model was trained on, as the card's ``training_domain``: the shortest distance
    (Angstrom) between each element pair ("1-8": H-O, ...), the longest bond of each element pair (Angstrom;
    bonded below ``domain.BOND_SCALE`` x the summed covalent radii) and the smallest reference HOMO-LUMO
    gap (eV) over the training frames, which ``ModelProvider`` compares every geometry and prediction
    against; and the training molecules' compositions and covalent bonds (:mod:`ase_wavecalc.domain`).
    The longest bonds are rounded up to 1e-4 A, so no training frame is beyond its own maximum in the
    fallback's strict check."""
    import math

    from ..domain import describe_frames, longest_bonds, merge
    from ..units import BOHR, HARTREE

    shortest: dict[str, float] = {}
    longest: dict[str, float] = {}
    gaps = []
    molecules = []
    for table, rows in zip(tables, row_sets):
        if len(rows) == 0:
            continue
        n = table.n_occ
        eps = table.mo_energy[torch.as_tensor(np.asarray(rows))]
        gaps.append(float((eps[:, n] - eps[:, n - 1]).min()) * HARTREE)
        z = table.numbers.numpy().astype(int)
        pos = table.positions_bohr[torch.as_tensor(np.asarray(rows))].numpy() * BOHR
        i, j = np.triu_indices(len(z), 1)
        molecules.append(describe_frames(z, pos, hydrogens_on_nearest=True))
        dist = np.linalg.norm(pos[:, i] - pos[:, j], axis=-1).min(axis=0)
        for a, b, d in zip(z[i], z[j], dist):
            key = f"{min(a, b)}-{max(a, b)}"
            shortest[key] = min(shortest.get(key, np.inf), float(d))
        for key, d in longest_bonds(z, pos, hydrogens_on_nearest=True).items():
            longest[key] = max(longest.get(key, 0.0), d)
    return {"min_pair_distance_A": {k: round(v, 4) for k, v in sorted(shortest.items())},
            "max_bond_length_A": {k: math.ceil(v * 1e4) / 1e4 for k, v in sorted(longest.items())},
            "min_homo_lumo_gap_eV": round(min(gaps), 3) if gaps else None, **merge(molecules),
            "hydrogens_on_nearest": True, "source": "training frames"}


def training_stages(run_dir, max_stages: int = 20) -> list[dict]:
    """The run and the runs it started from (``run.init_weights`` chains), earliest first.

    Each entry: ``run`` (directory name), ``path``, ``config`` (the parsed config.toml), ``epochs``,
    ``wall_time_min``, ``best_epoch`` and the validation errors of the best epoch (from metrics.csv), and
    ``init_weights`` (what the stage started from; a model directory ends the chain).
    """
    import csv

    from .config import load_config

    stages, seen = [], set()
    run = Path(run_dir).resolve()
    while run is not None and len(stages) < max_stages and run not in seen:
        seen.add(run)
        if not (run / "config.toml").is_file():
            break
        try:
            cfg = load_config(run / "config.toml")
        except Exception as exc:  # an old stage whose config no longer parses ends the list, with a note
            print(f"warning: training stage {run} not listed: {exc}", file=sys.stderr)
            break
        entry = {"run": run.name, "path": str(run), "init_weights": cfg.run.init_weights or None,
                 "trainable": cfg.run.trainable, "loss": dict(cfg.loss)}
        rows = []
        if (run / "metrics.csv").is_file():
            with open(run / "metrics.csv", newline="") as f:
                rows = list(csv.DictReader(f))
        if rows:
            best = min(rows, key=lambda r: float(r["val_loss"]))
            entry.update(epochs=int(rows[-1]["epoch"]), wall_time_min=round(float(rows[-1]["wall_time_s"]) / 60, 1),
                         best_epoch=int(best["epoch"]),
                         val_fock_mae_uha_at_best=round(float(best["val_fock_mae_uha"]), 2),
                         val_eps_mae_uha_at_best=round(float(best["val_eps_mae_uha"]), 2))
        stages.append(entry)
        init = cfg.run.init_weights
        nxt = cfg.resolve_path(init) if init else None
        # relative init_weights are written relative to the working directory of training: try the run's
        # grandparent (the repository root for runs/NAME) too
        if nxt is not None and not nxt.exists() and (run.parent.parent / init).exists():
            nxt = (run.parent.parent / init).resolve()
        if nxt is not None and not (nxt / "checkpoint.pt").is_file() and not (nxt / "weights.safetensors").is_file():
            print(f"warning: the stage before {run.name} ({init}) was not found; the card lists the stages "
                  "from this one on", file=sys.stderr)
        if nxt is not None and not (nxt / "checkpoint.pt").is_file():
            # a model exported in place (into the folder its run started from) lists that run already:
            # its stages from the first one listed here on are not repeated
            stages.extend(_before_seen(_stages_of_model(nxt), {st["run"] for st in stages})[::-1])
        run = nxt if nxt is not None and (nxt / "checkpoint.pt").is_file() else None
    return stages[::-1]


def _before_seen(stages: list[dict], names: set) -> list[dict]:
    """``stages`` up to (not including) the first whose run is in ``names``."""
    cut = next((i for i, st in enumerate(stages) if st["run"] in names), len(stages))
    return stages[:cut]


def _stages_of_model(model_dir: Path, seen: frozenset = frozenset()) -> list[dict]:
    """The training stages an exported model's card lists (earliest first), as ``training_stages`` entries
    whose ``path`` is the model directory and whose ``files`` name the copies kept there: a run started
    from an exported model inherits the stages that made it, so its card lists the whole recipe. ``seen``:
    the model folders already read (none is followed twice)."""
    card_path = Path(model_dir) / "model.json"
    if not card_path.is_file():
        return []
    card = json.loads(card_path.read_text())
    stages = [dict(st, path=str(model_dir)) for st in card.get("training_stages", []) if "run" in st]
    seen = seen | {card_path.resolve().parent}
    init = stages[0].get("init_weights") if stages else None
    if init:  # a card written before stages were inherited: follow its first stage's exported model
        for base in (Path.cwd(), Path(model_dir).parent.parent):
            older = base / init
            # (a model exported in place names its own folder: not followed, nor any folder twice)
            if ((older / "model.json").is_file() and not (older / "checkpoint.pt").is_file()
                    and older.resolve() not in seen):
                return _before_seen(_stages_of_model(older, seen),
                                    {st["run"] for st in stages}) + stages
    return stages


def _copy_stage_files(stages: list[dict], out: Path) -> list[dict]:
    """Copy each stage's config/metrics/curve into ``out``; returns the card entries (file names, no paths)."""
    entries = []
    for st in stages:
        src = Path(st["path"])
        files = {}
        for name, target in (("config.toml", f"train_config_{st['run']}.toml"),
                             ("metrics.csv", f"metrics_{st['run']}.csv"),
                             ("learning_curve.png", f"learning_curve_{st['run']}.png")):
            # a run directory holds config.toml etc.; an exported model (an inherited stage) the named copies
            for candidate in (src / name, src / target):
                if candidate.is_file():
                    if candidate.resolve() != (out / target).resolve():
                        shutil.copyfile(candidate, out / target)
                    files[name.split(".")[0]] = target
                    break
        entries.append({k: v for k, v in st.items() if k not in ("path",)} | {"files": files})
    return entries


def fock_trained(run_dir, stages: list[dict]) -> bool:
    """Whether F was ever trained: an F term in the loss of a stage, or stages inherited from (or a first
    stage that started from) an exported model whose card does not say ``fock_trained: false``."""
    import json

    # (stages inherited from the card of an older model may not record their loss)
    if any(float(w) > 0 for st in stages for k, w in (st.get("loss") or {}).items()
           if k.startswith(("fock", "orbital"))):
        return True
    # stages inherited from exported models: their cards say whether F was trained
    cards = {Path(st["path"]) / "model.json" for st in stages
             if not (Path(st["path"]) / "checkpoint.pt").is_file()}
    cards = [c for c in cards if c.is_file()]
    if cards:
        return any(json.loads(c.read_text()).get("fock_trained", True) for c in cards)
    init = stages[0].get("init_weights") if stages else None
    if not init:
        return False
    run = Path(stages[0]["path"])
    for base in (Path.cwd(), run.parent.parent, run):
        card = base / init / "model.json"
        if card.is_file():
            return bool(json.loads(card.read_text()).get("fock_trained", True))
    return False


def export_run(run_dir, out, test: bool = False, weights: str = "best", batch_size: int = 16,
               force: bool = False, refit_frames: int = 400) -> dict:
    """Export a run as a shipped model in directory ``out``; returns the card.

    Energy models get their per-element offsets refit on ``refit_frames`` training frames
    (:mod:`~ase_wavecalc.train.offsets`) before the test; 0 keeps the trained offsets.
    """
    from ..energy_paths import energy_path_for
    from ..model.io import save_model
    from .metrics import evaluate_model, format_metrics

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty (--force overwrites)")
    model, info = load_run_model(run_dir, weights)
    tables, rows, split = run_split_tables(run_dir, "test", check_hash=True)
    loss = info["config"]["loss"]
    # the energy path the run trained (no energy without energy or force terms; configs of runs from before
    # the rename of energy_head load: model.config.canonical_config)
    energy_path = energy_path_for(info["model_config"]).trained_by(loss)
    offset_refit = None
    if refit_frames > 0:
        datasets = [(t.path, d["train"][:refit_frames]) for t, d in zip(tables, split["datasets"])]
        offset_refit = energy_path.refit_offsets(model, datasets, charge=int(tables[0].charge),
                                                 labels=[d.get("labels", "reference") for d in split["datasets"]])
    if offset_refit is not None:
        print(f"energy offsets refit on {offset_refit['frames']} training frames "
              f"({offset_refit['outliers']} outliers left out): mean residual "
              f"{offset_refit['residual_mean_mev_before']:+.2f} -> {offset_refit['residual_mean_mev_after']:+.2f}"
              f" meV, RMS {offset_refit['residual_rms_mev_before']:.2f} -> "
              f"{offset_refit['residual_rms_mev_after']:.2f} meV")
    test_metrics, by_dataset = None, {}
    if test:
        # per dataset: the first one's metrics are the card's headline (test_metrics); datasets added in
        # later stages (other temperatures, active-learning frames) are reported beside it, not pooled in
        if len(rows[0]) == 0:
            raise ValueError(f"{run_dir}: the test split of its first dataset is empty")
        for d, table, r in zip(split["datasets"], tables, rows):
            if len(r) == 0:
                continue
            m = evaluate_model(model, [table], [r], batch_size=batch_size)
            m.update(energy_path.test_metrics(model, table.path, d["test"], charge=table.charge,
                                              labels=d.get("labels", "reference")))
            by_dataset[Path(d["path"]).name] = m
            print(format_metrics(m, f"test split of {Path(d['path']).name} ({m['n_structures']} structures):"))
        test_metrics = by_dataset[Path(split["datasets"][0]["path"]).name]
    card = build_card(run_dir, info, split, tables[0].metadata, test_metrics)
    if len(by_dataset) > 1:
        card["test_metrics_by_dataset"] = by_dataset
    # the tables are the whole dataset files: the training rows come from the same, already loaded ones
    card["training_domain"] = training_domain(
        tables, [t.rows_of_frames(d["train"]) for t, d in zip(tables, split["datasets"])])
    card["name"] = out.name
    entries = energy_path.card_entries()
    card["energy_trained"] = entries["energy_trained"]   # False: a Hamiltonian-only model
    # False: an energy-only network (an MLIP baseline): its F was never trained and is not offered
    stages = training_stages(run_dir)
    card["fock_trained"] = fock_trained(run_dir, stages)
    card["energy_path"] = entries["energy_path"]      # name and formula
    card["charge"] = int(tables[0].charge)
    high = [d for d in split["datasets"] if d.get("labels") == "high"]
    high_level = dict(tables[split["datasets"].index(high[0])].metadata.get("energy_level", {})) if high else None
    card.update(energy_path.levels_of_theory(dict(card["level_of_theory"]), high_level))
    if offset_refit is not None:
        card["training"]["energy_offset_refit"] = offset_refit
    out.mkdir(parents=True, exist_ok=True)
    card["training_stages"] = _copy_stage_files(stages, out)
    save_model(model, out, card)
    shutil.copyfile(run_dir / "config.toml", out / "train_config.toml")
    return card


def cli_main(args) -> int:
    try:
        card = export_run(args.run_dir, args.out, test=args.test, weights=args.weights,
                          batch_size=args.batch_size, force=args.force, refit_frames=args.refit_frames)
    except (FileNotFoundError, FileExistsError, KeyError, ValueError) as exc:
        print(f"wavecalc export: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {card['training']['weights']} to {args.out}")
    return 0
