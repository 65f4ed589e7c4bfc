"""``run.compile``: training steps through ``torch.compile`` (inductor), checked against the eager network.

For one molecule every batch of ``batch_size`` structures has the same shapes (same atoms, and for small
molecules every pair within the cutoff), so inductor compiles the forward and backward of the network once
and reuses them. Measured on glycine's fit network (24 channels, 3 layers, float32, one thread): a Fock step
of 4 structures 91 ms eager, 60 ms compiled (1.5x); the first compile takes ~170 s, ~11 s from inductor's disk
cache. Used only where it can be:

- steps whose loss needs no gradient of the positions (F-only phases): a force loss differentiates twice,
  which ``torch.compile`` does not do;
- full batches (a smaller last batch of an epoch runs eagerly rather than compiling a second graph);
- after the compiled loss and weight gradients of the first full batch match the eager ones (relative
  difference of the gradient vector below 1e-3 in float32, 1e-8 in float64): inductor has miscompiled the
  gate's backward of this network before (``model/compiled.py``), and a miscompiled step must never train.
"""
from __future__ import annotations

import time

import torch

__all__ = ["CompiledSteps"]


class CompiledSteps:
    """The module a training step runs: the compiled network where that is checked and possible, else the
    eager one. ``forward_loss(model, batch) -> (out, loss, parts)`` is the trainer's."""

    def __init__(self, model: torch.nn.Module, batch_size: int, forward_loss, log=print):
        self.model, self.batch_size, self.forward_loss, self.log = model, batch_size, forward_loss, log
        self.compiled = None        # None: not tried yet; False: eager for good

    def module_for(self, batch, needs_positions_grad: bool) -> torch.nn.Module:
        if needs_positions_grad or batch.n_structures != self.batch_size or self.compiled is False:
            return self.model
        if self.compiled is None:
            self.compiled = self._checked(batch)
        return self.model if self.compiled is False else self.compiled

    def _grads(self, module, batch, params) -> tuple[float, torch.Tensor]:
        _, loss, _ = self.forward_loss(module, batch)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        return float(loss.detach()), flat.detach().double()

    def _checked(self, batch):
        from ..model.compiled import compile_available

        ok, why = compile_available()
        if not ok:
            self.log(f"run.compile: training eagerly ({why})")
            return False
        params = [p for p in self.model.parameters() if p.requires_grad]
        start = time.perf_counter()
        try:
            compiled = torch.compile(self.model, dynamic=False)
            loss_c, grad_c = self._grads(compiled, batch, params)
        except Exception as exc:  # noqa: BLE001  (any compiler failure: train eagerly)
            self.log(f"run.compile: torch.compile failed ({str(exc).splitlines()[0][:200]}); training eagerly")
            return False
        seconds = time.perf_counter() - start
        loss_e, grad_e = self._grads(self.model, batch, params)
        tol = 1e-8 if next(self.model.parameters()).dtype == torch.float64 else 1e-3
        rel = float((grad_c - grad_e).norm() / grad_e.norm().clamp_min(1e-30))
        rel_loss = abs(loss_c - loss_e) / max(abs(loss_e), 1e-30)
        if not (rel < tol and rel_loss < tol):
            self.log(f"run.compile: the compiled step differs from the eager one (gradient {rel:.1e}, loss "
                     f"{rel_loss:.1e} relative); training eagerly")
            return False
        self.log(f"run.compile: training steps compiled in {seconds:.0f} s (gradient {rel:.1e} from eager)")
        return compiled
