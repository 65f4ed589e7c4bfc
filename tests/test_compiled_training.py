"""``run.compile``: training steps through torch.compile, used only where checked against the eager step.

The long test (``python -m pytest -m long``) compiles the tiny real network (a minute or more on a cold
inductor cache) and checks that its
training follows the eager run's; the others check, without compiling, when the eager network is used.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from _train_helpers import write_tiny_config

from ase_wavecalc.train.compiled_step import CompiledSteps
from ase_wavecalc.train.trainer import Trainer


class _Batch:
    def __init__(self, n):
        self.n_structures = n


@dataclasses.dataclass
class _TensorBatch:
    x: torch.Tensor
    n_structures: int = 4


def test_eager_where_compile_cannot_or_must_not_be_used(monkeypatch):
    model = torch.nn.Linear(2, 2)
    lines = []
    steps = CompiledSteps(model, batch_size=4, forward_loss=None, log=lines.append)
    assert steps.module_for(_Batch(4), needs_positions_grad=True) is model      # a force loss: eager
    assert steps.module_for(_Batch(3), needs_positions_grad=False) is model     # the short last batch: eager
    assert steps.compiled is None                                               # nothing tried yet
    monkeypatch.setattr("ase_wavecalc.model.compiled.compile_available", lambda: (False, "no C++ compiler"))
    assert steps.module_for(_Batch(4), needs_positions_grad=False) is model
    assert steps.compiled is False and "no C++ compiler" in lines[0]


def test_a_compiled_step_that_differs_from_eager_is_never_used(monkeypatch):
    """A stand-in for a miscompiled graph: torch.compile returning a module whose gradients are wrong."""
    model = torch.nn.Linear(3, 1)

    class Wrong(torch.nn.Module):
        def forward(self, x):
            return 2.0 * model(x)

    monkeypatch.setattr("ase_wavecalc.model.compiled.compile_available", lambda: (True, ""))
    monkeypatch.setattr(torch, "compile", lambda m, **kw: Wrong())

    def forward_loss(module, batch):
        loss = module(batch.x).square().sum()
        return None, loss, {}

    lines = []
    steps = CompiledSteps(model, batch_size=4, forward_loss=forward_loss, log=lines.append)
    assert steps.module_for(_TensorBatch(torch.randn(4, 3)), needs_positions_grad=False) is model
    assert steps.compiled is False and "differs from the eager one" in lines[0]


def _steps_with_stand_in(monkeypatch, stand_in, model, lines):
    monkeypatch.setattr("ase_wavecalc.model.compiled.compile_available", lambda: (True, ""))
    monkeypatch.setattr(torch, "compile", lambda m, **kw: stand_in)
    # no tolerance against eager: every check goes on to the float64 reference (whose own tolerance stays)
    monkeypatch.setattr(CompiledSteps, "TOLERANCE", {torch.float32: 0.0, torch.float64: 0.0})

    def forward_loss(module, batch):
        return None, module(batch.x).square().sum(), {}

    return CompiledSteps(model, batch_size=4, forward_loss=forward_loss, log=lines.append)


def test_a_compiled_step_off_by_float32_rounding_alone_is_used(monkeypatch):
    """A trained network's float32 gradient can differ between two evaluation orders by more than the
    fixed tolerance; a compiled step no further from float64 than the eager one is used all the same."""
    torch.manual_seed(0)
    model = torch.nn.Linear(50, 8)

    class CorrectlyRounded(torch.nn.Module):     # the same function, each result rounded once from float64
        def forward(self, x):
            return torch.nn.functional.linear(x.double(), model.weight.double(), model.bias.double()).float()

    lines = []
    steps = _steps_with_stand_in(monkeypatch, CorrectlyRounded(), model, lines)
    batch = _TensorBatch(1e3 * torch.randn(64, 50))
    assert isinstance(steps.module_for(batch, needs_positions_grad=False), CorrectlyRounded), lines
    assert "from float64" in lines[0]


def test_a_miscompiled_step_is_refused_by_the_float64_reference_too(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Linear(50, 8)

    class Wrong(torch.nn.Module):
        def forward(self, x):
            return 1.01 * model(x)

    lines = []
    steps = _steps_with_stand_in(monkeypatch, Wrong(), model, lines)
    assert steps.module_for(_TensorBatch(torch.randn(64, 50)), needs_positions_grad=False) is model
    assert steps.compiled is False and "differs from the eager one" in lines[0] and "float64" in lines[0]


def test_a_miscompiled_step_is_refused_where_a_phase_masks_part_of_a_weight(monkeypatch):
    """Phases mask part of a weight's gradient by hooks (``TrainingPhase.masked``), which a copy of the model
    loses: the float64 reference must not count the masked entries, or its distance from both float32 steps
    is the masked part's and hides the miscompile."""
    torch.manual_seed(0)
    model = torch.nn.Linear(50, 8)
    model.weight.register_hook(lambda g: torch.zeros_like(g))     # only the bias learns

    class Wrong(torch.nn.Module):      # the right loss, a backward 1% off
        def forward(self, x):
            y = model(x)
            return y + 0.01 * (y - y.detach())

    lines = []
    steps = _steps_with_stand_in(monkeypatch, Wrong(), model, lines)
    assert steps.module_for(_TensorBatch(10.0 * torch.randn(64, 50)), needs_positions_grad=False) is model
    assert steps.compiled is False and "float64" in lines[0]


@pytest.mark.long
def test_compiled_fock_training_follows_the_eager_run(water_db, tmp_path):
    """The tiny real network on F: the compiled run's validation F tracks the eager run's step for step (float32
    rounding apart), and the compiled steps were used."""
    curves = {}
    for compile_ in (False, True):
        cfg = tmp_path / f"c{compile_}.toml"
        write_tiny_config(cfg, water_db, run=f"compile = {'true' if compile_ else 'false'}", max_epochs=4)
        from ase_wavecalc.train.config import load_config

        lines = []
        Trainer(load_config(cfg), tmp_path / f"run{compile_}", log=lines.append).fit()
        rows = np.genfromtxt(tmp_path / f"run{compile_}" / "metrics.csv", delimiter=",", names=True)
        curves[compile_] = rows["val_fock_mae_uha"]
        if compile_:
            assert any("training steps compiled" in line for line in lines), lines
    assert all(math.isfinite(v) for v in curves[True])
    np.testing.assert_allclose(curves[True], curves[False], rtol=1e-3)
