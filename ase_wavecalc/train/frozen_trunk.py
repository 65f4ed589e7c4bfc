"""A readout trained on a frozen Fock trunk: each frame's trunk descriptors, and their derivatives, once.

In ``run.trainable = "energy_readout"`` or ``"transfer_head"`` (the readout path) the Fock trunk does not
change, yet a step of an energy + force loss runs it forward, differentiates it in the positions for the
forces and once more for the weight gradient of the force error. Measured on malondialdehyde's 5-h fit
network (float32, a batch of 4, one thread, 2 loaded cores; ``benchmarks/frozen_trunk_speed.py``): 156 ms a
step with the trunk, 66 ms without it.

Each frame's descriptors ``I0`` (n, M) (``ReadoutEnergy.fock_invariants``: the Fock trunk's invariant atom
descriptors) and their Jacobian ``J = dI/dR`` (3n, n, M) are computed once, when a step first meets the frame
(forward-mode autodiff: the frame's 3n unit displacements as batches of copies of the frame), and every later
step reads the linear function

    I(R) = I0 + sum_k (R - R0)_k J[k]

at the frame's own geometry R0: the same value, the same first derivative in R. The loss differentiates the
energy once in R (the forces) and then in the readout's weights, which needs no second derivative of I in R,
so the weight gradients are those of the trunk itself up to float rounding. Validation steps use the same
frames' entries (the EMA copy's trunk is the model's: frozen weights average to themselves).

Building an entry costs 0.5 s for malondialdehyde (one forward-mode pass over 27 copies), what ~7 steps save;
it pays for itself after ~23 epochs. The entries outlive the trainer within the process (keyed by a
fingerprint of the trunk's weights, the model config and the device, the dataset file and the frame id, and
checked against the frame's positions), so the readout runs of a fit's active rounds reuse them; ``release()``
frees them. Memory: 4 (3n + 1) n M bytes per frame in float32 (malondialdehyde, n = 9, M = 792: 0.8 MB;
uracil 1.4 MB). Once ``run.frozen_trunk_cache_mb`` is reached no entry is built: a batch with a frame not
kept runs the trunk. Below the cap an entry is the same in any process (one deterministic pass per frame), so a
resumed run repeats the uninterrupted one bit for bit; past it, which frames are kept depends on what the process
trained before, and the two agree to float rounding.
"""
from __future__ import annotations

import hashlib
import json

import torch

__all__ = ["FrozenTrunkInvariants", "release"]

#: tangents (copies of the frame) per forward-mode pass: a 30-atom molecule's 90 in one batch would hold
#: tens of thousands of edges with their tangents at once
TANGENTS_PER_PASS = 27

# one trunk's entries at a time, shared by the trainers of a process: {"fingerprint", "entries", "bytes", "full"}
_STORE: dict = {"fingerprint": None}


def release() -> None:
    """Free the kept entries (a fit calls this when its readout phases are over)."""
    _STORE.clear()
    _STORE["fingerprint"] = None


def _trunk_parameters(model: torch.nn.Module):
    return [p for name, p in model.named_parameters()
            if name == "embedding" or name.startswith(("embedding.", "interactions."))]


class FrozenTrunkInvariants:
    """``cache(batch)`` -> (N, M) the Fock trunk's descriptors of ``batch`` as a function of its positions, or
    None where a frame is not cached (the trainer then runs the trunk). ``tables``: the trainer's list of
    ``FrameTable`` (``batch.table`` indexes it; it may be grown in place)."""

    def __init__(self, model: torch.nn.Module, tables, max_mb: float, log=print):
        self.model, self.tables, self.max_bytes, self.log = model, tables, max_mb * 2.0 ** 20, log
        self.fingerprint = None   # set at the first call, when the weights (loaded from a checkpoint) are final

    def _store(self) -> dict:
        """The process's entries, emptied first where they belong to another trunk."""
        if self.fingerprint is None:
            config = json.dumps(getattr(self.model, "config", {}), sort_keys=True, default=str)
            h = hashlib.sha256(config.encode())
            for p in _trunk_parameters(self.model):
                h.update(p.detach().cpu().contiguous().numpy().tobytes())
            p = next(self.model.parameters())
            self.fingerprint = (h.hexdigest(), str(p.dtype), str(p.device))
        if _STORE.get("fingerprint") != self.fingerprint:      # another trunk's (or none): start afresh
            _STORE.clear()
            # entries: (dataset path, frame id) -> (I0 (n, M), J (3n, n, M), R0 (n, 3))
            _STORE.update(fingerprint=self.fingerprint, entries={}, bytes=0, full=False)
        return _STORE

    @classmethod
    def for_phase(cls, model, tables, energy_path, phase, needs_positions_grad: bool, max_mb: float, log=print):
        """The cache where it serves (readout path, energy-only steps with a force loss, the Fock trunk frozen,
        ``max_mb`` > 0), else None."""
        if (max_mb <= 0 or energy_path.name != "readout" or not phase.energy_only or not needs_positions_grad
                or not hasattr(model, "edge_context")
                or any(p.requires_grad for p in _trunk_parameters(model))):
            return None
        log(f"run.frozen_trunk_cache_mb: the frozen Fock trunk's descriptors and their derivatives are computed "
            f"once per frame (up to {max_mb:.0f} MB)")
        return cls(model, tables, max_mb, log)

    def __call__(self, batch) -> torch.Tensor | None:
        store = self._store()
        path = str(self.tables[int(batch.table)].path)
        keys = [(path, int(f)) for f in batch.frame]
        B, n = batch.n_structures, batch.n_atoms
        pos = batch.positions_bohr.reshape(B, n, 3)
        entries = store["entries"]
        for b, key in enumerate(keys):
            if key in entries and torch.equal(entries[key][2], pos[b].detach()):
                continue
            if store["full"] or not self._add(store, key, batch.numbers[:n], pos[b].detach()):
                return None
        i0, jac, r0 = (torch.stack(t) for t in zip(*(entries[k] for k in keys)))
        dr = (pos - r0).reshape(B, 3 * n)
        return (i0 + torch.einsum("bk,bknm->bnm", dr, jac)).reshape(B * n, -1)

    def _add(self, store: dict, key, numbers: torch.Tensor, r0: torch.Tensor) -> bool:
        import torch.autograd.forward_ad as fwad

        from ..energy_paths.readout import ReadoutEnergy

        n = r0.shape[0]
        k = 3 * n
        # copy c of the frame moves coordinate c (atom c // 3, axis c % 3) at unit speed
        tangents = torch.eye(k, dtype=r0.dtype, device=r0.device).reshape(k * n, 3)
        model, i0, jac = self.model, None, []
        for start in range(0, k, TANGENTS_PER_PASS):
            m = min(TANGENTS_PER_PASS, k - start)
            with torch.no_grad(), fwad.dual_level():
                dual = fwad.make_dual(r0.repeat(m, 1), tangents[start * n:(start + m) * n])
                batch = torch.arange(m, device=r0.device).repeat_interleave(n)
                ctx = model.edge_context(numbers.repeat(m), dual, batch)
                inv = fwad.unpack_dual(ReadoutEnergy.fock_invariants(model, model.fock_trunk(ctx)))
            i0 = inv.primal[:n].clone() if i0 is None else i0
            jac.append(inv.tangent.reshape(m, n, -1).clone())
        jac = torch.cat(jac)
        size = (i0.numel() + jac.numel() + r0.numel()) * i0.element_size()
        old = store["entries"].pop(key, None)
        if old is not None:
            store["bytes"] -= sum(t.numel() * t.element_size() for t in old)
        if store["bytes"] + size > self.max_bytes:
            if not store["full"]:
                self.log(f"run.frozen_trunk_cache_mb: {len(store['entries'])} frames cached "
                         f"({store['bytes'] / 2**20:.0f} MB); steps with other frames run the Fock trunk")
            store["full"] = True
            return False
        store["entries"][key] = (i0, jac, r0.clone())
        store["bytes"] += size
        return True
