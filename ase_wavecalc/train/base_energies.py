"""The frozen Hamiltonian's energies and forces for ``run.trainable = "atom_correction"``: computed once
on the train and validation frames (cached in RUN_DIR/base_energies.pt) so that each training step runs only
the energy correction.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from .config import TrainingError
from .data import epoch_plan
from .losses import gap_is_open, predicted_fock
from .metrics import UHA, fock_errors, orbital_errors
from ..energy_paths import LEARNED_ENERGY_PREFIXES

__all__ = ["prepare_base_energies"]


def prepare_base_energies(trainer) -> None:
    """Energy and gradient of the frozen Hamiltonian part (E_nn + 1/2 Tr[P (F + h + Delta h)], without
    e0 and the learned correction) on the train and validation frames, in float64 through the
    calculator's path; cached in RUN_DIR/base_energies.pt for resumes (checked against a hash of the
    frozen weights). Also the (fixed) validation F and orbital-energy errors."""
    import copy
    import hashlib

    from ..electronic import ClosedGapError
    from ..providers import ModelProvider

    bad = [k for k, w in trainer.loss_fn.weights.items() if k not in ("energy", "forces")]
    if bad:
        raise TrainingError(f"run.trainable = 'atom_correction' trains on energies and forces only; "
                            f"set the [loss] weights of {bad} to 0 (F is frozen)")
    frozen = {k: v for k, v in trainer.model.state_dict().items()
              if not (k == "element_energy_offsets" or k.startswith(LEARNED_ENERGY_PREFIXES))}
    gap_gate = trainer.loss_fn.options["gap_gate"]
    digest = hashlib.sha256()
    for k in sorted(frozen):
        digest.update(k.encode())
        digest.update(frozen[k].detach().cpu().double().numpy().tobytes())
    digest.update(repr(gap_gate).encode())
    digest.update(CHECKPOINT_FORMAT.encode())   # the weights' meaning (SO(2) path basis) too
    for t, table in enumerate(trainer.tables):   # the data and the frames it covers
        digest.update(f"{table.sha256}:{table.n_frames}".encode())
        digest.update(np.concatenate([trainer.rows["train"][t], trainer.rows["val"][t]]).tobytes())
    key = digest.hexdigest()
    path = trainer.run_dir / "base_energies.pt"
    cached = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    if cached is not None and (cached.get("key_sha256") != key or len(cached["tables"]) != len(trainer.tables)):
        trainer.log(f"{path} was computed for other frozen weights, data or gap_gate: recomputing")
        cached = None
    if cached is None:
        base = copy.deepcopy(trainer.model).to(torch.float64)
        with torch.no_grad():
            base.element_energy_offsets.zero_()
        base.atom_correction_mlp = None          # the Hamiltonian part only
        t0 = time.perf_counter()
        entries = []
        for t, table in enumerate(trainer.tables):
            provider = ModelProvider(base, card={"name": "frozen Hamiltonian", "charge": table.charge},
                                     charge=table.charge)
            rows = np.concatenate([trainer.rows["train"][t], trainer.rows["val"][t]])
            n = table.n_occ
            ref_gap = table.mo_energy[:, n] - table.mo_energy[:, n - 1]
            gated = 0
            energy = torch.full((table.n_frames,), math.nan, dtype=torch.float64)
            gradient = torch.full((table.n_frames, len(table.numbers), 3), math.nan, dtype=torch.float64)
            trainer.log(f"energies and forces of the frozen Hamiltonian on {len(rows)} frames of {table.path} "
                        "(once; cached in base_energies.pt)")
            for r in rows:
                try:
                    res = provider.compute(table.numbers.numpy(), table.positions_bohr[r].numpy(),
                                           want_gradient=True)
                except ClosedGapError:
                    gated += 1
                    continue                  # NaN: left out of the energy and force terms
                eps = np.asarray(res.mo_energy)
                if not gap_is_open(float(eps[n] - eps[n - 1]), float(ref_gap[r]), gap_gate):
                    gated += 1
                    continue
                energy[r] = float(res.energy)
                gradient[r] = torch.as_tensor(np.asarray(res.gradient))
            if gated:
                trainer.log(f"{gated} frames left out: predicted HOMO-LUMO gap below {gap_gate} x the reference")
            entries.append({"energy": energy, "gradient": gradient})
        cached = {"key_sha256": key, "tables": entries}
        save_checkpoint(path, cached)
        trainer.log(f"frozen-Hamiltonian energies done in {time.perf_counter() - t0:.0f} s")
    for table, entry in zip(trainer.tables, cached["tables"]):
        table.extra["base_energy"] = entry["energy"]
        table.extra["base_gradient"] = entry["gradient"]
    # F does not change: its validation errors once
    f_err, eps_err = [], []
    with torch.no_grad():
        for t, rows in epoch_plan(trainer.rows["val"], trainer.config.run.batch_size, None):
            table = trainer.tables[t]
            batch = table.batch(rows, dtype=trainer.dtype, table=t).to(getattr(trainer, "device", "cpu"))
            pred = predicted_fock(trainer.model(batch.numbers, batch.positions_bohr, batch.batch))
            pred = [p.cpu() for p in pred] if isinstance(pred, (list, tuple)) else pred.cpu()
            idx = torch.as_tensor(rows)
            f_err.append(fock_errors(pred, table.fock[idx], table.ao_atom)["fock_mae"])
            eps_err.append(orbital_errors(pred, table.fock[idx], table.overlap[idx], table.n_occ)["eps_occ_mae"])
    trainer._frozen_val = {"val_fock_mae_uha": float(torch.cat(f_err).mean()) * UHA,
                           "val_eps_mae_uha": float(torch.cat(eps_err).mean()) * UHA}
