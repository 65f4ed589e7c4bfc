"""Training of Hamiltonian models: config, batching, losses, metrics, the trainer, the heads fitted after
training (energy offsets, transfer head, committee), and the ``wavecalc train`` / ``finetune`` /
``committee`` / ``evaluate`` / ``export`` commands.

| module | job |
|---|---|
| ``config`` | TOML config -> validated dataclasses (misspelled keys are errors) |
| ``data`` | dataset arrays -> torch batches; split by counts and seed; data order |
| ``losses`` | loss terms registered by name (F MSE/MAE, orbital energies, energy, forces), weighted sum |
| ``metrics`` | F, orbital-energy, orbital, density-matrix errors; ``evaluate_model`` |
| ``stages`` | per-prefix learning rates, each step's rate (warm-up, cosine schedule), readout heads of older weights (which weights learn, ``run.trainable``, is a phase of the model's energy path: ``ase_wavecalc.energy_paths``) |
| ``trainer`` | the ``Trainer``: AdamW + plateau or cosine lr + EMA, bit-for-bit resume, time limits, frames joining the split |
| ``compiled_step`` | ``run.compile``: F steps through torch.compile, used after matching the eager step |
| ``frozen_trunk`` | ``run.frozen_trunk_cache_mb``: a frozen Fock trunk's descriptors and their Jacobian, once per frame, for readout steps |
| ``checkpoint`` | checkpoint format, atomic save/load, EMA weights, RNG states, ``initial_weights`` |
| ``runtime`` | process state of a run: isolated RNG/threads, SIGINT/SIGTERM, the run-directory lock |
| ``runlog`` | metrics.csv, learning_curve.png, atomic text writes, TOML dump |
| ``setup`` | model config from the data, frame split, initial weights / offsets / readout statistics |
| ``base_energies`` | the frozen Hamiltonian's energies for ``run.trainable = "atom_correction"`` |
| ``offsets`` | least-squares refit of the per-element energy offsets e0 (``wavecalc export``, ``run.refit_energy_offsets``) |
| ``features`` | the readout's inputs (standardized per-atom invariants of the frozen trunks) for a set of frames |
| ``transfer`` | closed-form ridge fit of the linear transfer head (``[model] transfer_head``) |
| ``committee`` | the uncertainty committee: K readout heads on bootstrap resamples, calibrated warning threshold |
| ``cli_train``, ``cli_finetune``, ``cli_committee``, ``cli_evaluate``, ``cli_export`` | the sub-commands |

Heavy imports stay inside the sub-modules; ``from ase_wavecalc.train import Trainer`` loads them lazily.
"""
__all__ = ["TrainConfig", "load_config", "Trainer", "TrainResult", "WeightedLoss", "register_loss_term",
           "evaluate_model", "format_metrics"]

_WHERE = {"TrainConfig": "config", "load_config": "config", "Trainer": "trainer", "TrainResult": "trainer",
          "WeightedLoss": "losses", "register_loss_term": "losses", "evaluate_model": "metrics",
          "format_metrics": "metrics"}


def __getattr__(name):
    if name in _WHERE:
        import importlib
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
