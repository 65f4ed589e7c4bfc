"""Training configuration: a TOML file read into typed, validated dataclasses.

A config has five tables; every key is optional except ``data.datasets``. Misspelled keys are errors
(with a suggestion), never silently ignored.

```toml
[data]
seed = 0                               # seed of the train/val/test split
[[data.datasets]]                      # one table per dataset file (one composition each)
path = "data/water_pbe_def2svp.db"     # relative: to the working directory, else to this file
train = 800                            # frame counts drawn without overlap; the rest is unused
val = 100
test = 100
labels = "reference"                   # or "high": train on the high-level labels (ase_wavecalc.labels)
test_frames_from = ""                  # model/run directory whose test frames of this file are the test split

[model]                                # passed to ase_wavecalc.model.build_model (keys of earlier versions
                                       # renamed: model.config.CONFIG_ALIASES); "basis" and
                                       # "elements" default to the datasets' basis and elements

[loss]                                 # term name -> weight (see ase_wavecalc.train.losses.LOSS_TERMS)
fock_mse = 1.0                         # Hartree^2
fock_mae = 1.0                         # Hartree
orbital_energy = 0.0                   # occupied eigenvalues, Hartree^2
gap_gate = 0.5                         # option, not a term: structures with a predicted HOMO-LUMO gap
                                       # below this fraction of the reference gap skip energy/forces

[optimizer]                            # AdamW, gradient clipping, EMA of the weights
lr = 1e-3
weight_decay = 0.0
betas = [0.9, 0.999]
grad_clip = 10.0                       # max global gradient norm; 0 disables
ema_decay = 0.99                       # 0 disables the EMA (validation then uses the raw weights)
lr_by_prefix = {}                      # {"readout_mlp." = 1e-3}: own lr for parameters by name prefix
warmup_steps = 0                       # linear warm-up of the learning rates (Adam's first steps move
                                       # every weight by ~lr, which can wreck a pretrained network)

[scheduler]
kind = "plateau"                       # "plateau": ReduceLROnPlateau on the validation loss; "cosine": the lr
                                       # falls from its base to min_lr along half a cosine over horizon_min
factor = 0.5                           # plateau: the factor of each reduction
patience = 10                          # plateau: epochs
threshold = 1e-3                       # plateau: relative improvement that counts
min_lr = 1e-6
horizon_min = 0                        # cosine: minutes of the run's training wall time (all invocations)

[run]
precision = "float32"                  # or "float64"
batch_size = 4                         # structures per step
max_epochs = 1000
max_steps = 0                          # 0: no limit
max_time_min = 0                       # wall-time budget of one invocation in minutes; 0: no limit
checkpoint_every_min = 10.0
grow_train_every_min = 0               # > 0: frames added to the dataset files join the training split
compile = false                        # torch.compile the steps of F-only phases (checked against eager)
frozen_trunk_cache_mb = 2048           # energy_readout: a frozen Fock trunk's descriptors once per frame; 0: off
stop_on_plateau = false                # plateau lr at min_lr and no better for another patience: stop ("converged")
seed = 0                               # weight initialization and data order
threads = 0                            # torch intra-op threads; 0 leaves torch's default
progress = true                        # tqdm bar
deterministic = true                   # torch.use_deterministic_algorithms: with several threads,
                                       # CPU scatter/index_put accumulation otherwise varies in the
                                       # last bit between runs (resume is then exact only with 1 thread)
init_weights = ""                      # start from trained weights: a run directory (its best EMA
                                       # weights) or an exported model directory; same architecture
refit_energy_offsets = false           # with init_weights: shift e0 to the datasets' energy level first
transfer_alpha = 0.0                   # trainable = "transfer_head": ridge strength of its closed-form start
                                       # (0: chosen by the validation energy error)
```
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

__all__ = ["DatasetSpec", "DataConfig", "OptimizerConfig", "SchedulerConfig", "RunConfig", "TrainConfig",
           "load_config", "parse_config", "RUN_OVERRIDABLE", "TrainingError"]

# [run] keys that may change when a run is resumed (stop criteria, threads and cosmetics; init_weights
# only acts on a fresh start)
RUN_OVERRIDABLE = ("max_epochs", "max_steps", "max_time_min", "checkpoint_every_min", "threads", "progress",
                   "deterministic", "init_weights", "frozen_trunk_cache_mb")


#: run.trainable values are the training phases of the energy paths (``ase_wavecalc.energy_paths.PHASES``:
#: each path says which weights each of its phases trains); TRAINABLE_ALIASES: their names in earlier
#: versions (still accepted, e.g. in the train_config*.toml files kept with the shipped models)
TRAINABLE_ALIASES = {"energy_head": "delta_hcore_head", "energy_correction": "atom_correction"}


class TrainingError(RuntimeError):
    """Training cannot start or continue (bad run directory, diverged loss, ...)."""


class ConfigError(ValueError):
    """A config file that cannot be used as written."""


def _from_table(cls, table: dict, where: str):
    """Build dataclass ``cls`` from a TOML table; unknown keys are errors with a close-match hint."""
    if not isinstance(table, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(table).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            advice = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown key {key!r} in [{where}]{advice}")
    return cls(**table)


@dataclass
class DatasetSpec:
    """One dataset file and how many of its frames go to each split."""

    path: str
    train: int
    val: int = 0
    test: int = 0
    # "reference": train on the dataset's own energies and forces; "high": on its high-level labels
    # (ase_wavecalc.labels: only the labeled frames; the low-level forces stay as ``low_gradient`` for the
    # ``forces_low`` term); "delta": on high minus reference (Delta-learning baselines)
    labels: str = "reference"
    # a model or run directory: the test split is this dataset's test frames there (the ones available),
    # and train/val never use them, so that a fine-tuned model is tested on frames no stage trained on
    test_frames_from: str = ""

    def __post_init__(self):
        from ..labels import LABEL_MODES

        if self.labels not in LABEL_MODES:
            raise ConfigError(f"dataset {self.path}: labels must be one of {LABEL_MODES}, got {self.labels!r}")
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"dataset {self.path}: {name} must be an integer >= 0, got {value!r}")
        if self.train == 0:
            raise ConfigError(f"dataset {self.path}: train must be > 0")


@dataclass
class DataConfig:
    datasets: list[DatasetSpec] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self):
        self.datasets = [d if isinstance(d, DatasetSpec) else _from_table(DatasetSpec, d, "data.datasets")
                         for d in self.datasets]
        if not self.datasets:
            raise ConfigError("[data] needs at least one [[data.datasets]] table with a path")


@dataclass
class OptimizerConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 10.0
    ema_decay: float = 0.99
    # learning rates of parameters whose names start with a prefix (e.g. a new energy readout on a
    # pretrained Fock network: {"readout_mlp." = 1e-3} beside a small lr); the others take lr
    lr_by_prefix: dict = field(default_factory=dict)
    warmup_steps: int = 0         # linear warm-up of every learning rate over the first steps of a run

    def __post_init__(self):
        from ..model.config import canonical_state_dict

        try:   # parameter names of earlier versions (model.config.PARAMETER_ALIASES) under their names now
            self.lr_by_prefix = canonical_state_dict({str(k): float(v)
                                                      for k, v in dict(self.lr_by_prefix).items()})
        except ValueError as exc:
            raise ConfigError(f"optimizer.lr_by_prefix: {exc}") from None
        if any(v <= 0 for v in self.lr_by_prefix.values()):
            raise ConfigError("optimizer.lr_by_prefix: every learning rate must be > 0")
        self.warmup_steps = int(self.warmup_steps)
        if self.warmup_steps < 0:
            raise ConfigError("optimizer.warmup_steps must be >= 0")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2:
            raise ConfigError("optimizer.betas must have two numbers")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"optimizer.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            raise ConfigError(f"optimizer.lr must be > 0, got {self.lr}")


@dataclass
class SchedulerConfig:
    kind: str = "plateau"
    factor: float = 0.5
    patience: int = 10
    threshold: float = 1e-3
    min_lr: float = 1e-6
    horizon_min: float = 0.0

    def __post_init__(self):
        if self.kind not in ("plateau", "cosine"):
            raise ConfigError(f"scheduler.kind must be 'plateau' or 'cosine', got {self.kind!r}")
        if not 0.0 < self.factor < 1.0:
            raise ConfigError(f"scheduler.factor must be in (0, 1), got {self.factor}")
        if self.kind == "cosine" and not self.horizon_min > 0:
            raise ConfigError("scheduler.kind = 'cosine' needs scheduler.horizon_min > 0 (minutes of "
                              f"training over which the lr falls to min_lr), got {self.horizon_min}")


@dataclass
class RunConfig:
    precision: str = "float32"
    batch_size: int = 4
    max_epochs: int = 1000
    max_steps: int = 0
    max_time_min: float = 0.0
    checkpoint_every_min: float = 10.0
    seed: int = 0
    threads: int = 0
    progress: bool = True
    init_weights: str = ""
    # with init_weights: shift the per-element energy offsets e0 (least squares over the training frames)
    # so that the loaded model's energies match the datasets' on average before the first step; for
    # training on another level of theory (`wavecalc finetune`), whose energies differ by a large,
    # nearly per-element constant
    refit_energy_offsets: bool = False
    # trainable = "transfer_head": before the first step its weights are fitted in closed form (ridge
    # regression of the energy residuals on the element-pooled standardized invariants); the ridge strength,
    # 0: chosen from a grid by the validation energy error
    transfer_alpha: float = 0.0
    # > 0: at the end of an epoch, once this many minutes have passed since the last look, the frames the
    # dataset files gained since the split was made join the training split (validation and test keep
    # theirs): a run that trains beside a labeller (`wavecalc fit`) learns from every frame labelled so far
    grow_train_every_min: float = 0.0
    # training steps through torch.compile (inductor) where the loss needs no force gradients, checked against
    # the eager step on the first batch (train/compiled_step.py); falls back to eager steps otherwise
    compile: bool = False
    # readout phases with the Fock trunk frozen ("energy_readout", "transfer_head") and a force loss: the
    # trunk's descriptors of each frame and their derivatives in the positions computed once and kept
    # (train/frozen_trunk.py: ~2x the steps per hour); at most this many MB (float32: 4 (3n + 1) n M bytes a
    # frame; once reached, batches with other frames run the trunk); 0: off
    frozen_trunk_cache_mb: float = 2048.0
    # with the plateau scheduler: stop ("converged") once its lr is at min_lr and a further patience of epochs
    # has brought no better validation loss (a run bound by its data rather than its time: `wavecalc fit`'s
    # readout then leaves the rest of its phase to active learning, which adds frames)
    stop_on_plateau: bool = False
    trainable: str = "all"        # a training phase of the model's energy path (energy_paths/): "all";
                                  # Hamiltonian path: "delta_hcore_head" (Delta h, e0, correction),
                                  # "atom_correction" (e0, the correction and its trunk); readout path:
                                  # "energy_readout" (e0, readout MLP, energy trunk), "transfer_head"
    deterministic: bool = True

    def __post_init__(self):
        if isinstance(self.trainable, str):   # names of earlier versions
            self.trainable = TRAINABLE_ALIASES.get(self.trainable, self.trainable)
        from ..energy_paths import PHASES

        if self.trainable not in PHASES:
            raise ConfigError(f"run.trainable must be one of {list(PHASES)} (the training phases of the energy "
                              f"paths), got {self.trainable!r}")
        if self.precision not in ("float32", "float64"):
            raise ConfigError(f"run.precision must be 'float32' or 'float64', got {self.precision!r}")
        if self.batch_size < 1:
            raise ConfigError(f"run.batch_size must be >= 1, got {self.batch_size}")

    @property
    def dtype(self):
        import torch
        return torch.float64 if self.precision == "float64" else torch.float32


@dataclass
class TrainConfig:
    """The whole training config. ``source`` is the TOML text it was read from (saved with the run)."""

    data: DataConfig
    model: dict = field(default_factory=dict)
    loss: dict = field(default_factory=lambda: {"fock_mse": 1.0, "fock_mae": 1.0})
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    base_dir: str = "."
    source: str = ""

    def to_dict(self) -> dict:
        """Plain-type dict of the settings (no ``base_dir``/``source``), as in the TOML file."""
        out = dataclasses.asdict(self)
        out.pop("base_dir")
        out.pop("source")
        out["optimizer"]["betas"] = list(out["optimizer"]["betas"])
        return out

    def resolve_path(self, path: str) -> Path:
        """A dataset path: absolute as is; relative to the working directory if it exists there, else to
        the directory of the config file."""
        p = Path(os.path.expanduser(path))
        if p.is_absolute() or p.exists():
            return p.resolve() if p.exists() else p
        alt = Path(self.base_dir) / p
        return alt.resolve() if alt.exists() else p


def parse_config(table: dict, base_dir: str | os.PathLike = ".", source: str = "") -> TrainConfig:
    """Validate a config given as a dict (the parsed TOML)."""
    from .losses import LOSS_OPTIONS, LOSS_TERMS

    known = ("data", "model", "loss", "optimizer", "scheduler", "run")
    for key in table:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"unknown table [{key}]" + (f"; did you mean [{hint[0]}]?" if hint else ""))
    if "data" not in table:
        raise ConfigError("the config needs a [data] table with [[data.datasets]]")
    loss = dict(table.get("loss", {"fock_mse": 1.0, "fock_mae": 1.0}))
    for name, weight in loss.items():
        if name not in LOSS_TERMS and name not in LOSS_OPTIONS:
            hint = difflib.get_close_matches(name, list(LOSS_TERMS) + list(LOSS_OPTIONS), n=1)
            raise ConfigError(f"unknown loss term {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + f" (known: {', '.join(sorted(LOSS_TERMS))}; options: {', '.join(LOSS_OPTIONS)})")
        if not isinstance(weight, (int, float)) or weight < 0:
            raise ConfigError(f"loss weight {name} must be a number >= 0, got {weight!r}")
        loss[name] = float(weight)
    if not any(w > 0 for k, w in loss.items() if k in LOSS_TERMS):
        raise ConfigError("[loss] has no term with a positive weight")
    model = table.get("model", {})
    if not isinstance(model, dict):
        raise ConfigError("[model] must be a table")
    from ..model.config import canonical_config
    try:   # key names of earlier versions (energy_head, atom_energy_hidden) under their names now
        model = canonical_config(model)
    except ValueError as exc:
        raise ConfigError(f"[model]: {exc}") from None
    return TrainConfig(
        data=_from_table(DataConfig, table["data"], "data"),
        model=dict(model),
        loss=loss,
        optimizer=_from_table(OptimizerConfig, table.get("optimizer", {}), "optimizer"),
        scheduler=_from_table(SchedulerConfig, table.get("scheduler", {}), "scheduler"),
        run=_from_table(RunConfig, table.get("run", {}), "run"),
        base_dir=str(base_dir),
        source=source,
    )


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read and validate a TOML training config."""
    path = Path(path)
    text = path.read_text()
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(table, base_dir=path.resolve().parent, source=text)


def config_differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, name + ".")
        elif va != vb:
            out.append(name)
    return out


def as_plain(value: Any):
    """Tuples -> lists recursively (for JSON and for comparing configs)."""
    if isinstance(value, dict):
        return {k: as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v) for v in value]
    return value
