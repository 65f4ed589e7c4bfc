"""Set-up of a training run before the loop: the model config from the datasets, the frame split
(``held_out_split``, ``load_data``), and the initial state of the model (weights from ``run.init_weights``,
mean on-site blocks of F, per-element energy offsets, readout standardization).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import initial_weights
from .config import TrainConfig, TrainingError
from .data import FrameTable, load_table, split_frames
from .offsets import offset_correction
from ..dataset import formula as _formula
from .runlog import _atomic_write_text
from .stages import adapt_readout_heads
from ..units import HARTREE

__all__ = ["held_out_split", "load_data", "load_initial_weights", "mean_atom_blocks", "model_config_for",
           "reference_atom_energies", "shift_energy_offsets", "standardize_readout"]


def model_config_for(config: TrainConfig, tables) -> dict:
    """The config handed to ``build_model``: ``[model]`` plus basis and elements from the datasets."""
    cfg = dict(config.model)
    bases = {t.basis.lower() for t in tables}
    if len(bases) != 1:
        raise TrainingError(f"the datasets use different basis sets: {sorted(bases)}")
    basis = tables[0].basis
    if "basis" in cfg and str(cfg["basis"]).lower() != basis.lower():
        raise TrainingError(f"[model] basis = {cfg['basis']!r} but the datasets are in {basis!r}")
    cfg.setdefault("basis", basis)
    elements = sorted({int(z) for t in tables for z in t.numbers})
    if "elements" in cfg:
        missing = sorted(set(elements) - {int(z) for z in cfg["elements"]})
        if missing:
            raise TrainingError(f"[model] elements lacks {missing}, present in the datasets")
    else:
        cfg["elements"] = elements
    return cfg


def mean_atom_blocks(tables, row_sets) -> dict[int, torch.Tensor]:
    """Mean on-site block of F per element over the training frames (Hartree, PySCF order).

    The network's on-site biases start from these (``model.set_mean_block``), so training begins near
    the right scale (core levels of O reach -20 Hartree) instead of at zero.
    """
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = {}
    for table, rows in zip(tables, row_sets):
        if len(rows) == 0:
            continue
        from ..basis import BasisLayout
        z = [int(v) for v in table.numbers]
        slices = BasisLayout(table.basis, sorted(set(z))).ao_slices(z)
        fock = table.fock[torch.as_tensor(rows)]
        for za, sl in zip(z, slices):
            block = fock[:, sl, sl].sum(0)
            sums[za] = sums[za] + block if za in sums else block
            counts[za] = counts.get(za, 0) + len(rows)
    return {za: sums[za] / counts[za] for za in sorted(sums)}


def reference_atom_energies(tables, row_sets, elements, hamiltonian: bool = True) -> torch.Tensor:
    """Per-element offsets e0 (Hartree, in the order of ``elements``) that make the energy functional
    E = E_nn + 1/2 Tr[P (F + h_core)] + sum_A e0[Z_A], evaluated with the *reference* F, reproduce the
    reference energies in the least-squares sense (minimum norm when compositions do not determine
    every element). For DFT these offsets absorb most of the exchange-correlation double counting,
    so an energy loss starts near the right scale. Needs ``e_tot`` and ``hcore`` in the tables.
    ``hamiltonian=False`` (the readout path, E = sum_A e0[Z_A] + learned part): e0 fits e_tot itself
    (each energy path's ``initial_energy_offsets`` says which).
    The solve is :func:`~ase_wavecalc.train.offsets.offset_correction` (singular values below 1e-8 of the
    largest dropped: the default pinv cutoff kept round-off singular values).
    """
    from ..electronic import solve_fock
    from ..integrals import nuclear_repulsion

    counts, residuals = [], []
    col = {int(z): k for k, z in enumerate(elements)}
    for table, rows in zip(tables, row_sets):
        if len(rows) == 0:
            continue
        idx = torch.as_tensor(rows)
        if hamiltonian:
            fock, overlap = table.fock[idx], table.overlap[idx]
            _, c = solve_fock(fock, overlap)
            c_occ = c[..., :table.n_occ]
            dm = 2.0 * c_occ @ c_occ.transpose(-1, -2)
            e_elec = 0.5 * (dm * (fock + table.extra["hcore"][idx])).sum(dim=(-2, -1))
            e_nuc = torch.stack([nuclear_repulsion(table.numbers, r) for r in table.positions_bohr[idx]])
            residuals.append(table.extra["e_tot"][idx] - e_nuc - e_elec)
        else:
            residuals.append(table.extra["e_tot"][idx].to(torch.float64))
        n = torch.zeros(len(elements), dtype=torch.float64)
        for z in table.numbers.tolist():
            n[col[int(z)]] += 1
        counts.append(n.expand(len(rows), -1))
    a, b = torch.cat(counts), torch.cat(residuals)
    return torch.as_tensor(offset_correction(a.numpy(), b.numpy()), dtype=torch.float64)


def held_out_split(table, spec, source, seed: int) -> dict[str, list[int]]:
    """Split whose test frames are the frames of ``table`` that ``source`` (a model directory with
    model.json, or a run directory with split.json) held out as test frames of the same dataset file
    (matched by file name); train and val are drawn (``seed``) from the other frames. Used when a model
    is trained further on another level of theory: its test frames stay untouched by every stage."""
    source = Path(source)
    if (source / "model.json").is_file():
        entries = json.loads((source / "model.json").read_text())["split"]["datasets"]
    elif (source / "split.json").is_file():
        entries = json.loads((source / "split.json").read_text())["datasets"]
    else:
        raise TrainingError(f"test_frames_from = {str(source)!r}: neither a model (model.json) nor a run "
                            "directory (split.json)")
    name = Path(table.path).name
    match = [e for e in entries if Path(e.get("name") or e.get("path", "")).name == name]
    if not match:
        raise TrainingError(f"test_frames_from = {str(source)!r} has no split of {name}")
    held = set(int(f) for f in match[0]["test_frames" if "test_frames" in match[0] else "test"])
    test = sorted(int(f) for f in table.frame if int(f) in held)
    if spec.test:
        test = sorted(np.random.default_rng(seed).choice(test, size=min(spec.test, len(test)), replace=False).tolist())
    rest = [int(f) for f in table.frame if int(f) not in held]
    ids = split_frames(rest, spec.train, spec.val, 0, seed)
    ids["test"] = [int(f) for f in test]
    return ids


def load_data(trainer) -> None:
    """Read the datasets into ``trainer.tables`` and split their frames into ``trainer.rows`` (train, val,
    test row indices per table): a new split, written to split.json, or the saved one on resume."""
    keys = trainer.loss_fn.dataset_keys
    trainer.tables: list[FrameTable] = []
    split_path = trainer.run_dir / "split.json"
    saved_split = json.loads(split_path.read_text()) if trainer.resume and split_path.is_file() else None
    split_info = {"seed": trainer.config.data.seed, "datasets": []}
    trainer.rows = {"train": [], "val": [], "test": []}
    for i, spec in enumerate(trainer.config.data.datasets):
        path = trainer.config.resolve_path(spec.path)
        table = load_table(path, keys=keys, labels=spec.labels)
        if saved_split is not None:
            entry = saved_split["datasets"][i]
            if entry["sha256"] != table.sha256:
                trainer.log(f"warning: {path} changed since the split was made (sha256 differs); "
                            "keeping the saved frame ids")
            ids = {k: entry[k] for k in ("train", "val", "test")}
        else:
            held = {}
            if spec.test_frames_from:
                ids = held_out_split(table, spec, trainer.config.resolve_path(spec.test_frames_from),
                                     trainer.config.data.seed)
                held = {"test_frames_from": str(spec.test_frames_from)}
            else:
                ids = split_frames(table.frame, spec.train, spec.val, spec.test, trainer.config.data.seed)
            entry = {"path": str(spec.path), "resolved_path": str(path), "sha256": table.sha256,
                     "n_frames": table.n_frames, "formula": _formula(table.numbers),
                     "counts": {"train": spec.train, "val": spec.val, "test": len(ids["test"])},
                     "labels": spec.labels, **held, **ids}
        split_info["datasets"].append(entry)
        for k in trainer.rows:
            trainer.rows[k].append(table.rows_of_frames(ids[k]))
        trainer.tables.append(table)
    charges = sorted({int(t.charge) for t in trainer.tables})
    if len(charges) > 1:   # a model (its card's "charge") computes one total charge
        raise TrainingError(f"the datasets hold molecules of different total charges {charges}: a model is "
                            "trained for one charge")
    if saved_split is None:
        _atomic_write_text(split_path, json.dumps(split_info, indent=1))
    trainer.n_train = sum(len(r) for r in trainer.rows["train"])
    trainer.n_val = sum(len(r) for r in trainer.rows["val"])
    if trainer.n_val == 0:
        raise TrainingError("the validation split is empty: set val > 0 for at least one dataset")


def grow_train(trainer) -> int:
    """Frames the dataset files gained since the split was made (converged ones) join the training split;
    validation and test keep their frames. The grown tables replace ``trainer.tables`` and split.json is
    rewritten, so a resumed run trains on the same frames. Returns how many frames joined."""
    from ..dataset import connect, frame_ids

    split_path = trainer.run_dir / "split.json"
    info = json.loads(split_path.read_text())
    added = 0
    for i, spec in enumerate(trainer.config.data.datasets):
        entry = info["datasets"][i]
        if entry.get("test_frames_from"):     # a split held out by another file's frames stays as it is
            continue
        path = trainer.config.resolve_path(spec.path)
        known = set(entry["train"]) | set(entry["val"]) | set(entry["test"])
        new = sorted(set(frame_ids(connect(path), converged=True)) - known)
        if not new:
            continue
        table = load_table(path, keys=trainer.loss_fn.dataset_keys, labels=spec.labels)
        in_table = {int(x) for x in table.frame}
        new = [f for f in new if f in in_table]
        entry["train"] = sorted(entry["train"] + new)
        entry.update(sha256=table.sha256, n_frames=table.n_frames)
        entry["counts"]["train"] = len(entry["train"])
        trainer.tables[i] = table
        for k in trainer.rows:
            trainer.rows[k][i] = table.rows_of_frames(entry[k])
        added += len(new)
    if added:
        _atomic_write_text(split_path, json.dumps(info, indent=1))
        trainer.n_train = sum(len(r) for r in trainer.rows["train"])
    return added


def load_initial_weights(trainer, path) -> bool:
    """``run.init_weights``: load the weights at ``path`` into ``trainer.model`` (an energy correction that
    does not fit starts from its initialization); returns whether they held the readout standardization."""
    from ..energy_paths import LEARNED_ENERGY_PREFIXES

    state = initial_weights(path)
    own = trainer.model.state_dict()
    # a model without the Delta h head takes the F head of block readouts that have one
    state = adapt_readout_heads(state, own)
    # the energy path keeps what fits of the earlier energy parts (a committee this model does not carry,
    # an energy correction of another shape or reading a trunk that is new are left out and start from
    # their initialization; a readout drops the e0 of a Hamiltonian-path model)
    state = trainer.energy_path.adapt_initial_weights(state, own)
    try:
        missing, unexpected = trainer.model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise TrainingError(f"run.init_weights {path}: the weights do not fit the [model] "
                            f"architecture: {str(exc).splitlines()[0]}") from None
    # only parts that a later stage adds (the per-atom energy correction) may be missing
    bad = list(unexpected) + [k for k in missing if not k.startswith(LEARNED_ENERGY_PREFIXES)]
    if bad:
        raise TrainingError(f"run.init_weights {path}: the weights do not fit the [model] "
                            f"architecture: {'unexpected' if unexpected else 'missing'} {bad[:4]}")
    loaded_norm = any(k.startswith("readout_norm.") for k in state)
    trainer.log(f"initial weights from {path}"
                + (f"; new, freshly initialized: {len(missing)} tensors of the per-atom energy "
                   "correction" if missing else ""))
    return loaded_norm


def standardize_readout(trainer, max_frames: int = 200) -> None:
    """Readout standardization (``readout_standardize``) from the invariants of the atoms of up to
    ``max_frames`` training frames (spread over the datasets), before the first step."""
    xs, done = [], 0
    with torch.no_grad():
        for t, rows in enumerate(trainer.rows["train"]):
            take = np.asarray(rows)[: max(1, max_frames // len(trainer.tables))]
            for i in range(0, len(take), 16):
                batch = trainer.tables[t].batch(take[i:i + 16], dtype=trainer.dtype, table=t)
                batch = batch.to(getattr(trainer, "device", "cpu"))
                out = trainer.model(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)
                xs.append(out["readout_inputs"])
            done += len(take)
    trainer.model.readout_norm.set_statistics(torch.cat(xs))
    trainer.log(f"readout inputs standardized on the atoms of {done} training frames")


def shift_energy_offsets(trainer) -> None:
    """``run.refit_energy_offsets``: e0 += least-squares per-element fit of (E_ref - E_model) over the
    training frames (minimum norm where compositions do not separate the elements)."""
    elements = [int(z) for z in trainer.model_config["elements"]]
    counts, residuals = [], []
    with torch.no_grad():
        for t, rows in enumerate(trainer.rows["train"]):
            table = trainer.tables[t]
            n = torch.zeros(len(elements), dtype=torch.float64)
            for z in table.numbers.tolist():
                n[elements.index(int(z))] += 1
            for i in range(0, len(rows), 32):
                batch = table.batch(rows[i:i + 32], dtype=trainer.dtype, table=t)
                e = trainer.energy_path.batch_energy(trainer.model,
                                                     batch.to(getattr(trainer, "device", "cpu"))).cpu()
                residuals.append(batch.e_tot - e.double())
                counts.append(n.expand(len(e), -1))
    r = torch.cat(residuals)
    shift = torch.as_tensor(offset_correction(torch.cat(counts).numpy(), r.numpy()), dtype=torch.float64)
    with torch.no_grad():
        e0 = trainer.model.element_energy_offsets
        e0.add_(shift.to(dtype=e0.dtype, device=e0.device))
    spread = float((r - torch.cat(counts) @ shift).abs().mean()) * HARTREE * 1e3
    trainer.log("per-element energy offsets shifted to the datasets' level: "
                + ", ".join(f"Z={z}: {float(v):+.6f} Ha" for z, v in zip(elements, shift))
                + f"; remaining mean |error| {spread:.2f} meV per structure")
