"""A fast energy+forces function of a readout model for one fixed molecule (MD, optimizers): issue #22.

``FastReadoutEnergy(model, numbers, dtype)`` computes exactly what ``model(numbers, positions, None,
energy_only=True)["energy"]`` computes (energy_path "readout"), but for one molecule whose atoms (hence,
with the network's all-pairs edges, its edge set) are fixed when it is built. What is constant for a fixed
molecule and fixed weights is computed once, at build time, in float64 and then cast to ``dtype``:

* edges (src, dst), the element one-hot parts of the edge attributes (folded into a per-edge bias of the
  first radial layer) and of the readout input (folded into a per-atom bias of the readout MLP);
* the embedding and the whole first block's self and pre-linear parts (its input is the element embedding,
  0e only: independent of the geometry);
* every linear map's per-component weight (``weight[comp_irrep]``), the SO(2) path matrices (one dense
  (k, k) block per |m| group, already transposed), the 1/sqrt(avg_num_neighbors) and 1/sqrt(2) factors
  (folded into the post/self linear maps), the readout standardization (folded into the MLP's first layer,
  whose columns are also permuted to the order in which the invariants are produced);
* the sum of the element energy offsets (kept in float64: it is Hartree-sized; only the learned, small
  per-atom part is computed in ``dtype``).

Per call, the radial MLPs of all blocks of both trunks run as one GEMM plus two batched GEMMs, the
per-(|m|, irrep) scalings are expanded once per trunk to per-component tensors, and the committee (if any)
runs without autograd (its forces, ``forces_std``, are left to the eager path). The result is the same
function of the positions as the eager network; differences are rounding only (float64: ~1e-12 relative;
float32: see tests/test_fast_energy.py and benchmarks/speed_fast.py).

Forces: autograd of the returned energy with respect to the float64 positions.

Not handled (``supported(model)`` is False; callers use the eager path): Hamiltonian-path models, models
without ``energy_path = "readout"``, linear layers with biases where the eager ones have none (a newer
architecture), and NaN/coincident atoms (checked by the caller's input validation; ``__call__`` checks too).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .layers import edge_frame

__all__ = ["FastReadoutEnergy", "supported"]

_SQRT_HALF = math.sqrt(0.5)


def supported(model) -> tuple[bool, str]:
    """(whether ``FastReadoutEnergy`` can stand in for ``model``'s energy path, why not)."""
    cfg = getattr(model, "config", None) or {}
    if cfg.get("energy_path") != "readout" or getattr(model, "readout_mlp", None) is None:
        return False, "not a readout-energy model"
    if not cfg.get("num_layers"):
        return False, "no Fock-trunk blocks"
    trunks = [model.interactions] + ([model.energy_interactions] if model.energy_interactions is not None else [])
    for blocks in trunks:
        for blk in blocks:
            for lin in (blk.lin_pre, blk.lin_post, blk.lin_self):
                if lin.bias is not None:
                    return False, "a linear map with a bias"
            if any(l.bias is not None for l in blk.radial.linears) or len(blk.radial.linears) != 3:
                return False, "a radial MLP of another shape"
    mlp = model.readout_mlp
    if len(mlp) != 5 or not isinstance(mlp[1], nn.SiLU) or not isinstance(mlp[3], nn.SiLU):
        return False, "a readout MLP of another shape"
    return True, ""


class _Trunk:
    """Constants of one message-passing trunk (Fock or energy) for one molecule, in ``dtype``."""

    def __init__(self, model, embedding, blocks, layout, ix, dtype, n_radial_in):
        f64 = torch.float64
        self.layout, self.n_layers = layout, len(blocks)
        C = self.C = blocks[0].channels
        self.D, self.nq = layout.dim, layout.n_irreps
        elem = ix.elem
        src, dst = ix.src, ix.dst
        N = elem.shape[0]
        # block 0: its input is the embedding (0e only), so lin_pre(h0)[src] and lin_self(h0) are constants
        x0 = embedding.detach().to(f64)[elem]                                   # (N, C)
        h0 = torch.cat([x0[:, None, :], x0.new_zeros(N, layout.dim - 1, C)], 1)
        b0 = blocks[0]
        w_pre0 = b0.lin_pre.weight.detach().to(f64)[0]                        # 0e weights (C, C)
        self.x0_src = (x0 @ w_pre0)[src].to(dtype)                            # (E, C)
        self.conv0_row = b0.conv.weight_matrix().detach().to(f64)[0].to(dtype)[:, None, None]   # (D, 1, 1)
        self.h0 = h0.to(dtype)
        # per block: [lin_post * norm, lin_self] / sqrt 2 as one (D, 2C, C) map; lin_pre (D, C, C)
        self.w_pre, self.w_out, self.conv_blocks, self.gates = [], [], [], []
        comp = layout.comp_irrep_l
        for blk in blocks:
            wpre = blk.lin_pre.weight.detach().to(f64)[comp]
            wpost = blk.lin_post.weight.detach().to(f64)[comp] * (blk.norm * _SQRT_HALF)
            wself = blk.lin_self.weight.detach().to(f64)[comp] * _SQRT_HALF
            self.w_pre.append(wpre.to(dtype))
            self.w_out.append(torch.cat([wpost, wself], 1).to(dtype))
            W = blk.conv.weight_matrix().detach().to(f64)
            self.conv_blocks.append([W[g0:g1, g0:g1].T.contiguous().to(dtype) for g0, g1 in layout.m_groups])
            g = blk.gate
            self.gates.append((g.weight.detach().to(dtype), g.bias.detach().to(dtype), g.gate_index.clone(),
                               g.n_gated, layout.n_scalars))
        # block 0's self part (constant): (lin_self(h0) / sqrt 2), l-order (N, D, C)
        wself0 = b0.lin_self.weight.detach().to(f64)[comp] * _SQRT_HALF
        self.self0 = torch.einsum("ndc,dck->ndk", h0, wself0).to(dtype)
        # radial MLPs of all blocks: first layer (rbf part) side by side, element part as a per-edge bias
        H = blocks[0].radial.linears[0].out_features
        self.H = H
        self.size = blocks[0].scale_in.size
        self.w1 = torch.cat([blk.radial.linears[0].weight.detach().to(f64)[:, :n_radial_in].T for blk in blocks], 1)
        oh = torch.nn.functional.one_hot(elem, len(model.elements)).to(f64)
        oh_edge = torch.cat([oh[dst], oh[src]], 1)
        self.b1 = torch.cat([oh_edge @ blk.radial.linears[0].weight.detach().to(f64)[:, n_radial_in:].T
                             for blk in blocks], 1)
        self.w2 = torch.stack([blk.radial.linears[1].weight.detach().to(f64).T for blk in blocks])
        self.w3 = torch.stack([blk.radial.linears[2].weight.detach().to(f64).T for blk in blocks])
        self.w1, self.b1, self.w2, self.w3 = (t.to(dtype) for t in (self.w1, self.b1, self.w2, self.w3))
        self.m_perm, self.m_inv = layout.m_perm.clone(), layout.m_inv.clone()
        self.group_sizes = list(layout.group_sizes)
        self.group_signs, self.irm_sizes = list(layout.group_signs), list(layout.irm_sizes)
        self.irm_irrep = layout.irm_irrep.clone()
        self.l_sizes = [stop - start for start, stop, _ in layout.l_blocks]
        self.irrep_of_component = layout.comp_irrep_l.clone()


class FastReadoutEnergy:
    """energy(positions_bohr (N, 3) float64 tensor) -> (energy () float64 Hartree, committee (K,) or None).

    Built once per molecule (``numbers``) and weights; see the module docstring. ``dtype`` is the dtype of
    the network part (float64 or float32); positions enter and the energy leaves in float64, so autograd
    gives the gradient in float64. The weights are copied at build time: a model changed afterwards needs
    a new instance (``ModelProvider`` keys its instance on the weights' versions).

    ``device``: where the per-call work runs (default: the model's). The constants are always built on the
    CPU (from a CPU copy of a model that lives elsewhere) and then moved there; positions are moved in, the
    energy stays on the device (autograd brings the gradient back to the caller's CPU positions)."""

    def __init__(self, model, numbers, dtype=torch.float64, device=None):
        ok, why = supported(model)
        if not ok:
            raise ValueError(f"no fast energy path: {why}")
        on = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
        self.device = torch.device(device) if device is not None else next(iter(on), torch.device("cpu"))
        if on - {torch.device("cpu")}:
            import copy

            model = copy.deepcopy(model).cpu()
        self._build(model, numbers, dtype)
        if self.device.type != "cpu":
            _move(self, self.device)

    def _build(self, model, numbers, dtype):
        f64 = torch.float64
        numbers = torch.as_tensor(np.asarray(numbers, dtype=np.int64))
        ix = model.matrix_index(numbers, None)
        self.dtype = dtype
        self.numbers = numbers.clone()
        self.n_atoms = int(numbers.shape[0])
        self.src, self.dst, self.elem = ix.src.clone(), ix.dst.clone(), ix.elem.clone()
        self.wigner_u = {l: getattr(model.wigner, f"u{l}").detach().to(f64).to(dtype)
                         for l in range(2, model.wigner.lmax + 1)}
        self.lmax = model.wigner.lmax
        self.rbf_cutoff, self.n_rbf = model.rbf.cutoff, model.rbf.num_basis
        self.env_cutoff, self.env_p = model.envelope.cutoff, model.envelope.p
        n_radial_in = model.rbf.num_basis
        self.trunks = [_Trunk(model, model.embedding, model.interactions, model.layout, ix, dtype, n_radial_in)]
        if model.energy_interactions is not None:
            self.trunks.append(_Trunk(model, model.energy_embedding, model.energy_interactions,
                                      model.energy_layout, ix, dtype, n_radial_in))
        # radial MLPs of both trunks in one first-layer GEMM; second/third layers batched per trunk
        self.w1 = torch.cat([t.w1 for t in self.trunks], 1)
        self.b1 = torch.cat([t.b1 for t in self.trunks], 1)
        self.h_split = [t.n_layers * t.H for t in self.trunks]
        # readout: invariants are produced per trunk as [0e channels of every block (L, C) | squared norms
        # (L, nq, C)]; the eager order is per block [0e (C) | squared norms (nq, C)] -> permute the columns
        perm, offset = [], 0
        for t in self.trunks:
            C, nq, L = t.C, t.nq, t.n_layers
            per = C * (1 + nq)
            perm += [offset + k * per + c for k in range(L) for c in range(C)]
            perm += [offset + k * per + C + q * C + c for k in range(L) for q in range(nq) for c in range(C)]
            offset += L * per
        perm = torch.tensor(perm, dtype=torch.long)
        n_inv = offset
        n_el = len(model.elements)
        onehot = torch.nn.functional.one_hot(self.elem, n_el).to(f64)
        if model.readout_norm is not None:
            shift = model.readout_norm.shift.detach().to(f64)
            scale = model.readout_norm.scale.detach().to(f64)
        else:
            shift, scale = torch.zeros(n_inv, dtype=f64), torch.ones(n_inv, dtype=f64)

        def fold(mlp):
            """(W1 (n_inv, H) for our column order, per-atom bias (N, H), W2, b2, W3, b3) in float64."""
            W1 = mlp[0].weight.detach().to(f64)
            b1 = mlp[0].bias.detach().to(f64)
            w_inv, w_oh = W1[:, :n_inv], W1[:, n_inv:]
            bias_atom = b1 - w_inv @ (shift * scale) + onehot @ w_oh.T          # (N, H)
            return [(w_inv * scale).T[perm], bias_atom, mlp[2].weight.detach().to(f64).T,
                    mlp[2].bias.detach().to(f64), mlp[4].weight.detach().to(f64).T, mlp[4].bias.detach().to(f64)]

        from ..energy_paths.readout import READOUT_ENERGY_SCALE

        main = fold(model.readout_mlp)
        main[4] = main[4] * READOUT_ENERGY_SCALE
        main[5] = main[5] * READOUT_ENERGY_SCALE
        self.mlp = [t.to(dtype) for t in main]
        self.transfer = None
        if model.transfer_weight is not None:
            w = model.transfer_weight.detach().to(f64)[self.elem]               # (N, n_inv)
            self.transfer = ((w * scale)[:, perm].to(dtype), float((w * shift * scale).sum()))
        self.committee = None
        if model.committee_mlps is not None:
            members = [fold(m) for m in model.committee_mlps]
            K = len(members)
            # one GEMM for the first layers of all members, batched GEMMs after it
            self.committee = [torch.cat([m[0] for m in members], 1).to(dtype),
                              torch.cat([m[1] for m in members], 1).to(dtype),
                              torch.stack([m[2] for m in members]).to(dtype),
                              torch.stack([m[3] for m in members])[:, None, :].to(dtype),
                              (torch.stack([m[4] for m in members]) * READOUT_ENERGY_SCALE).to(dtype),
                              (torch.stack([m[5] for m in members]) * READOUT_ENERGY_SCALE)[:, None, :].to(dtype),
                              K]
        self.e0_sum = float(model.element_energy_offsets.detach().to(f64)[self.elem].sum())
        self.n_out = [2 * t.size for t in self.trunks]

    # ------------------------------------------------------------------------------------------
    def _wigner(self, Q):
        Ds = [None, Q]
        E = Q.shape[0]
        for l in range(2, self.lmax + 1):
            prev = Ds[-1]
            n = prev.shape[-1]
            kron = (prev[:, :, None, :, None] * Q[:, None, :, None, :]).reshape(E, 3 * n, 3 * n)
            U = self.wigner_u[l]
            Ds.append(U.T @ kron @ U)
        return Ds

    def __call__(self, positions: torch.Tensor):
        """positions (N, 3) float64 Bohr (may require grad) -> (energy () float64, committee (K,) float64 or
        None, detached). The energy is E of the eager network at these positions."""
        dtype = self.dtype
        pos = positions.to(device=self.device, dtype=dtype)[:, [1, 2, 0]]     # e3nn order (y, z, x)
        vec = pos[self.src] - pos[self.dst]
        d = torch.linalg.norm(vec, dim=-1)
        Q = edge_frame(vec / d[:, None])
        Ds = self._wigner(Q)
        DsT = [None] + [D.transpose(1, 2) for D in Ds[1:]]
        # radial basis and envelope (radial.BesselBasis, PolynomialEnvelope)
        u = d / self.rbf_cutoff
        k = torch.arange(1, self.n_rbf + 1, dtype=dtype, device=self.device) * math.pi
        rbf = torch.sin(k * u[:, None]) / (2.0 * u[:, None])
        p = self.env_p
        ue = (d / self.env_cutoff).clamp(max=1.0)
        up = ue ** p
        env = 1.0 - 0.5 * (p + 1) * (p + 2) * up + p * (p + 2) * up * ue - 0.5 * p * (p + 1) * up * ue * ue
        env = torch.where(d < self.env_cutoff, env, torch.zeros_like(env))
        # first radial layer of every block of both trunks: one GEMM
        r1 = torch.nn.functional.silu(torch.addmm(self.b1, rbf, self.w1))
        inv_parts, sq_parts = [], []
        for t, r1t in zip(self.trunks, torch.split(r1, self.h_split, 1)):
            E = r1t.shape[0]
            r2 = torch.nn.functional.silu(torch.bmm(r1t.view(E, t.n_layers, t.H).transpose(0, 1), t.w2))
            r = torch.bmm(r2, t.w3)                                        # (L, E, 2 size)
            layers = self._trunk(t, r, env, Ds, DsT)
            hs = torch.stack(layers)                                       # (L, N, D, C)
            inv_parts.append(hs[:, :, 0, :].transpose(0, 1).reshape(self.n_atoms, -1))
            sq = hs.new_zeros(t.n_layers, self.n_atoms, t.nq, t.C).index_add_(2, t.irrep_of_component, hs.square())
            sq_parts.append(sq.transpose(0, 1).reshape(self.n_atoms, -1))
        inv = torch.cat([x for pair in zip(inv_parts, sq_parts) for x in pair], 1)     # (N, n_inv)
        w1, b1, w2, b2, w3, b3 = self.mlp
        a = torch.nn.functional.silu(torch.addmm(b1, inv, w1))
        a = torch.nn.functional.silu(torch.addmm(b2, a, w2))
        learned = torch.addmm(b3, a, w3).sum()
        if self.transfer is not None:
            learned = learned + (self.transfer[0] * inv).sum() - self.transfer[1]
        energy = learned.to(torch.float64) + self.e0_sum
        committee = None
        if self.committee is not None:
            with torch.no_grad():
                cw1, cb1, cw2, cb2, cw3, cb3, K = self.committee
                x = inv.detach()
                a = torch.nn.functional.silu(torch.addmm(cb1, x, cw1))                 # (N, K H)
                a = a.view(self.n_atoms, K, -1).transpose(0, 1)                         # (K, N, H)
                a = torch.nn.functional.silu(torch.baddbmm(cb2, a, cw2))
                members = torch.baddbmm(cb3, a, cw3).sum((1, 2)).to(torch.float64)     # (K,)
                committee = members + self.e0_sum
        return energy, committee

    def _trunk(self, t, r, env, Ds, DsT):
        """Every block's output (N, D, C) l-order of trunk ``t``; r (L, E, 2 size) the radial MLP outputs.

        Per block, the per-(|m|, irrep) scalings (n_irm, E, C) are applied per |m| group with broadcasting
        over the +m/-m blocks (as ``SO2Conv`` does): expanding them to all components first costs more
        memory traffic than it saves operations."""
        C, nq = t.C, t.nq
        E = r.shape[1]
        n_irm = t.layout.n_irm
        layers, h = [], t.h0
        for k, rk in enumerate(torch.unbind(r, 0)):
            a_in, b_in, a_out, b_out = torch.split(rk, [C * nq, n_irm, C * nq, n_irm], 1)
            s_out = a_out.view(E, nq, C).transpose(0, 1).index_select(0, t.irm_irrep) * b_out.T[:, :, None]
            s_out = torch.split(s_out, t.irm_sizes, 0)
            if k == 0:
                # input 0e only: message = conv row 0 * (x0_src * scalar scaling) * s_out. As the eager
                # _ScaleHead.scalar: its factor b is column C of the radial output (the column after the
                # first C), which is what the weights were trained with
                s0 = t.x0_src * a_in[:, :C] * (a_in[:, C] * env)[:, None]          # (E, C)
                y = t.conv0_row * s0[None]                                           # (D, E, C)
                ys = [(yg.view(ns, kk, E, C) * sg).view(ns * kk, E, C) for yg, sg, ns, kk in
                      zip(torch.split(y, t.group_sizes, 0), s_out, t.group_signs, t.irm_sizes)]
                h = self._update(t, 0, h, torch.cat(ys, 0), Ds, self_part=t.self0)
            else:
                s_in = (a_in.view(E, nq, C).transpose(0, 1).index_select(0, t.irm_irrep)
                        * (b_in * env[:, None]).T[:, :, None])
                s_in = torch.split(s_in, t.irm_sizes, 0)
                x = torch.einsum("ndc,dck->ndk", h, t.w_pre[k])
                xe = self._rotate_in(x[self.src], DsT, t)                              # (D, E, C) m-order
                ys = []
                for Wg, xg, si, so, ns, kk in zip(t.conv_blocks[k], torch.split(xe, t.group_sizes, 0), s_in, s_out,
                                                  t.group_signs, t.irm_sizes):
                    yg = Wg @ (xg.view(ns, kk, E, C) * si).view(ns * kk, E * C)
                    ys.append((yg.view(ns, kk, E, C) * so).view(ns * kk, E, C))
                h = self._update(t, k, h, torch.cat(ys, 0), Ds)
            layers.append(h)
        return layers

    @staticmethod
    def _rotate_l_blocks(x, Ds, l_sizes):
        """Each l > 0 block of x (E, D, C) (l-order along D) multiplied by its per-edge Wigner matrix Ds[l]."""
        E, _, C = x.shape
        parts = []
        for l, xl in enumerate(torch.split(x, l_sizes, 1)):
            if l > 0:
                xl = torch.bmm(Ds[l], xl.reshape(E, 2 * l + 1, -1)).view(E, -1, C)
            parts.append(xl)
        return torch.cat(parts, 1)

    def _rotate_in(self, x, DsT, t):
        return self._rotate_l_blocks(x, DsT, t.l_sizes).transpose(0, 1).index_select(0, t.m_perm)

    def _rotate_out(self, x, Ds, t):
        y = x.transpose(0, 1).index_select(1, t.m_inv)                      # (E, D, C) l-order
        return self._rotate_l_blocks(y, Ds, t.l_sizes)

    def _update(self, t, k, h, mt, Ds, self_part=None):
        """h + Gate(lin_post(sum_j m_ij) norm / sqrt 2 + lin_self(h) / sqrt 2) (norm, sqrt 2 folded in)."""
        m = self._rotate_out(mt, Ds, t)
        agg = h.new_zeros(h.shape).index_add_(0, self.dst, m)
        if self_part is None:
            pre = torch.einsum("ndc,dck->ndk", torch.cat([agg, h], 2), t.w_out[k])
        else:
            C = t.C
            pre = torch.einsum("ndc,dck->ndk", agg, t.w_out[k][:, :C]) + self_part
        gw, gb, gi, n_gated, ns = t.gates[k]
        s = pre[:, 0]
        parts = [torch.nn.functional.silu(pre[:, :1])]
        if ns == 2:
            parts.append(torch.tanh(pre[:, 1:2]))
        if n_gated:
            g = torch.sigmoid(torch.addmm(gb, s, gw)).view(s.shape[0], n_gated, t.C)
            parts.append(pre[:, ns:] * g[:, gi])
        return h + torch.cat(parts, 1)


def _move(obj, device):
    """Every tensor held by ``obj`` (a ``FastReadoutEnergy`` and its ``_Trunk``s: attributes, lists, tuples,
    dicts) moved to ``device`` in place of the CPU one."""
    def moved(x):
        if isinstance(x, torch.Tensor):
            return x.to(device)
        if isinstance(x, _Trunk):
            _move(x, device)
            return x
        if isinstance(x, list):
            return [moved(v) for v in x]
        if isinstance(x, tuple):
            return tuple(moved(v) for v in x)
        if isinstance(x, dict):
            return {k: moved(v) for k, v in x.items()}
        return x

    for name, value in list(vars(obj).items()):
        if name != "layout":
            setattr(obj, name, moved(value))


FAST_MODES = {"float32": torch.float32, "float64": torch.float64}


def fast_mode(value) -> str | None:
    """The ``fast`` setting normalized: "float32" (also True), "float64", or None (also False, "off",
    "none": the eager network). Anything else is a ValueError."""
    if value is True:
        return "float32"
    if value is None or value is False or (isinstance(value, str) and value.lower() in ("off", "none", "false")):
        return None
    if isinstance(value, str) and value.lower() in FAST_MODES:
        return value.lower()
    raise ValueError(f"fast must be 'float32' (or True), 'float64' or None/False, got {value!r}")


class FastPath:
    """The fast energy+forces path of one model: a ``FastReadoutEnergy`` per molecule, rebuilt when the
    weights change in place (their version counters) and kept for the last ``keep`` compositions.

    ``compute(numbers, positions_bohr, want_gradient)`` -> (energy Hartree, gradient (n, 3) Hartree/Bohr or
    None, committee energies (K,) Hartree or None), or None when the model has no fast path (then the
    caller runs the eager network). Building one costs milliseconds per molecule (no compilation).

    ``compile`` (``model/compiled.py``): False (default): never; True: torch.compile each molecule at its
    first call (minutes); "auto": compile in a background thread once a molecule has had
    ``compiled.AUTO_AFTER`` calls, using the uncompiled path until then. A compiled graph is used only after
    it has reproduced the uncompiled energy and gradient; any failure leaves the uncompiled path in use."""

    def __init__(self, model, mode="float32", keep: int = 4, compile=False, device=None):
        self.model, self.mode = model, fast_mode(mode)
        self.device = None if device is None else torch.device(device)
        self.available, self.reason = supported(model)
        if self.mode is None:
            self.available, self.reason = False, "switched off"
        if compile not in (False, True, "auto", None):
            raise ValueError(f"compile must be False, True or 'auto', got {compile!r}")
        self.compile = compile or False
        self.keep = int(keep)
        self._instances: dict = {}
        self._calls: dict = {}
        self._compiler = None
        self._tensors = None
        self.n_built = 0

    def __getstate__(self):
        return {**self.__dict__, "_instances": {}, "_calls": {}, "_compiler": None, "_tensors": None}

    def weights_version(self) -> tuple:
        """The in-place version counters of the model's parameters and buffers (changed by optimizer steps and
        ``load_state_dict``). The tensors are listed once: walking the module tree costs ~1 ms a call."""
        if self._tensors is None:
            self._tensors = list(self.model.parameters()) + list(self.model.buffers())
        return tuple(t._version for t in self._tensors)

    def instance(self, numbers) -> FastReadoutEnergy:
        return self._instance(numbers)[1]

    def _instance(self, numbers):
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        key = numbers.tobytes()
        version = self.weights_version()
        got = self._instances.pop(key, None)
        if got is None or got[0] != version:
            got = (version, FastReadoutEnergy(self.model, numbers, FAST_MODES[self.mode], device=self.device))
            self.n_built += 1
        self._instances[key] = got             # most recent last
        while len(self._instances) > self.keep:
            self._instances.pop(next(iter(self._instances)))
        return (key, version), got[1]

    def compiled(self, numbers):
        """The compiled function of this molecule if it is ready, else None."""
        if self._compiler is None:
            return None
        return self._compiler.get(self._instance(numbers)[0])

    def _function(self, numbers, xyz):
        key, fast = self._instance(numbers)
        if not self.compile:
            return fast
        from .compiled import AUTO_AFTER, BackgroundCompiler

        if self._compiler is None:
            self._compiler = BackgroundCompiler()
        for old in [k for k in self._compiler.ready if k[0] == key[0] and k != key]:
            del self._compiler.ready[old]      # compiled for weights since changed
        ready = self._compiler.get(key)
        if ready is not None:
            return ready
        n = self._calls[key] = self._calls.get(key, 0) + 1
        if self.compile is True:
            self._compiler.start(key, fast, xyz, background=False)
        elif n >= AUTO_AFTER:
            self._compiler.start(key, fast, xyz)
        return self._compiler.get(key) or fast

    def compute(self, numbers, positions_bohr, want_gradient: bool):
        if not self.available:
            return None
        xyz = np.asarray(positions_bohr, dtype=np.float64).reshape(-1, 3)
        if len(xyz) > 1 and float(np.linalg.norm(xyz[:, None] - xyz[None], axis=-1)[np.triu_indices(len(xyz), 1)].min()) < 1e-3:
            raise ValueError("two atoms (almost) coincide")     # as the eager network
        # energy-only calls use the uncompiled function: the compiled graph is specialized to autograd being on
        # (calling it without would compile a second graph, minutes)
        fn = self._function(numbers, xyz) if want_gradient else self.instance(numbers)
        pos = torch.tensor(xyz, requires_grad=want_gradient)
        with torch.set_grad_enabled(want_gradient):
            energy, committee = fn(pos)
            gradient = torch.autograd.grad(energy, pos)[0].numpy() if want_gradient else None
        return (float(energy.detach()), gradient,
                None if committee is None else committee.cpu().numpy())
