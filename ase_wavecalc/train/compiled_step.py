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
  A trained float32 network's gradient is small and its float32 rounding larger than 1e-3 relative (the
  uracil fit's third Fock round: 1.3e-3 between two float32 evaluations); where the two differ by more, both
  are compared with the same step in float64, and the compiled one is used if its loss and gradient are no
  further from it than ``ROUNDING_SLACK`` times the eager one's, plus 1e-3 relative (a miscompiled graph is
  off by O(1), not by rounding).
"""
from __future__ import annotations

import time

import torch

__all__ = ["CompiledSteps"]


class CompiledSteps:
    """The module a training step runs: the compiled network where that is checked and possible, else the
    eager one. ``forward_loss(model, batch) -> (out, loss, parts)`` is the trainer's."""

    TOLERANCE = {torch.float32: 1e-3, torch.float64: 1e-8}   # relative, compiled against eager
    ROUNDING_SLACK = 4.0    # compiled may be this many times further from float64 than eager float32 is,
    ROUNDING_TOLERANCE = 1e-3   # plus this much (relative)

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
        dtype = next(self.model.parameters()).dtype
        rel, rel_loss = _relative(grad_c, grad_e), abs(loss_c - loss_e) / max(abs(loss_e), 1e-30)
        why = f"gradient {rel:.1e} from eager"
        if not (rel < self.TOLERANCE[dtype] and rel_loss < self.TOLERANCE[dtype]):
            if dtype == torch.float64:
                within, why = False, f"{why}, loss {rel_loss:.1e}"
            else:
                within, why = self._within_rounding(batch, loss_c, loss_e, grad_c, grad_e)
            if not within:
                self.log(f"run.compile: the compiled step differs from the eager one ({why}); training eagerly")
                return False
        self.log(f"run.compile: training steps compiled in {seconds:.0f} s ({why})")
        return compiled

    def _within_rounding(self, batch, loss_c: float, loss_e: float, grad_c: torch.Tensor,
                         grad_e: torch.Tensor) -> tuple[bool, str]:
        """Whether the compiled float32 loss and gradient are as near the float64 ones as the eager float32
        ones are (``ROUNDING_SLACK`` times their distance, plus the float32 tolerance)."""
        import copy
        import dataclasses

        tol = self.ROUNDING_TOLERANCE
        try:
            reference = copy.deepcopy(self.model).double()
            fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
            batch64 = dataclasses.replace(batch, **{k: v.double() for k, v in fields.items()
                                                    if isinstance(v, torch.Tensor) and v.is_floating_point()})
            learned = [p for p in reference.parameters() if p.requires_grad]
            loss_r, grad_r = self._grads(reference, batch64, learned)
        except Exception as exc:  # noqa: BLE001  (no reference, e.g. out of memory: train eagerly)
            return False, f"no float64 reference ({str(exc).splitlines()[0][:120]})"
        # a copy loses the gradient hooks that mask part of a weight (a phase's ``masked``): where both float32
        # gradients are exactly zero, so is the reference's
        grad_r = torch.where((grad_c == 0) & (grad_e == 0), torch.zeros_like(grad_r), grad_r)
        off_c, off_e = _relative(grad_c, grad_r), _relative(grad_e, grad_r)
        loss_off_c, loss_off_e = abs(loss_c - loss_r), abs(loss_e - loss_r)
        within = (off_c <= self.ROUNDING_SLACK * off_e + tol
                  and loss_off_c <= self.ROUNDING_SLACK * loss_off_e + tol * abs(loss_r))
        scale = max(abs(loss_r), 1e-30)
        return within, (f"gradient {off_c:.1e} from float64 against eager float32's {off_e:.1e}, "
                        f"{_relative(grad_c, grad_e):.1e} from eager; loss {loss_off_c / scale:.1e} from float64 "
                        f"against {loss_off_e / scale:.1e}")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))
