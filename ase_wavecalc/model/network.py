"""The Hamiltonian network: atoms and positions -> Fock matrix (and optional energy outputs).

Architecture (PhiSNet's outputs, NequIP-style message passing, eSCN-style edge-frame products):

1. Embedding: element -> C scalars (0e) per atom; all other irreps start at zero.
2. ``num_layers`` interaction blocks over every ordered atom pair (i <- j) of a molecule (the envelope
   makes pairs beyond ``cutoff`` contribute exactly zero): rotate Linear(h_j) into the bond frame, scale
   it per (|m|, irrep, channel), apply the edge-frame tensor product with Y(r_hat) (``SO2Conv``, weights
   shared by the channels), scale again, rotate back, sum over j / sqrt(avg_num_neighbors). The
   scalings come from an MLP of Bessel functions of the distance and both elements; the envelope
   multiplies them. h <- h + Gate((Linear(messages) + Linear(h)) / sqrt 2), Linear(messages) starting
   at 0.1 scale (each block starts close to the identity: 2x lower error after 4 CPU minutes on water
   than unit scale). Features carry every L <= lmax = 2 * (highest l of the basis) with both parities
   (E(3)-equivariant: inversion is a symmetry and is tested).
3. Pair features for every ordered pair (i, j), i != j, whether or not within ``cutoff`` (off-diagonal
   blocks need them): Linear(h_i) and Linear'(h_j) in the bond frame go through an edge-frame tensor
   product, scaled before and after by an MLP of the pair's invariants: the m = 0 natural-parity
   components of both atoms' features in the bond frame (projections of each environment on the bond
   axis; normalized to unit RMS per pair, because the scalings multiply the features and a feedback of
   their size is unstable), Bessel functions of the distance up to ``pair_cutoff`` and both elements.
   So the pair block depends jointly on both environments (PhiSNet gets this from pair tensor products,
   at a much higher cost). ``pair_layers`` optional edge-frame residual blocks follow; the envelope at
   ``pair_cutoff`` multiplies the result (far blocks vanish smoothly).
4. Readout (``blocks.BlockReadout``): per element (diagonal blocks, with 0e biases = mean atom block,
   ``set_mean_block``) and per ordered element pair (off-diagonal blocks), a linear map to the irreps the
   block needs and one Clebsch-Gordan assembly matmul into PySCF order. F_ii = (B_ii + B_ii^T)/2,
   F_ij = (B_ij + B_ji^T)/2: symmetric and permutation-equivariant by construction.

Deliberately not done: a full Clebsch-Gordan tensor product (O(L^6), 16 ms per layer for ethanol here),
torch-scatter, torch.compile (compile time dwarfs a CPU training run of minutes; for inference, measured
on ethanol with torch 2.13: 300 s to compile, a recompile per geometry at the coincident-atom check, and
forces that differed from eager mode by 1.2 eV/A).

Inputs and outputs (atomic units, PySCF spherical AO order):

| key | shape | unit |
|---|---|---|
| numbers | (N,) long | |
| positions | (N, 3) | Bohr |
| batch | (N,) long or None | molecule index 0..B-1 |

The output dict's keys, with shape, unit and meaning, are declared once in ``config.OUTPUT_KEYS`` ("fock",
"delta_hcore", "atomic_energy_sum", "learned_energy", "energy", "readout_inputs", "energy_committee",
"transfer_correction"). With ``delta_hcore_head`` the block readouts have a second, Fock-shaped head:
"delta_hcore" (B, nao, nao) Hartree, a learned correction Delta h to the core Hamiltonian. Every model has
per-element energy offsets e0 (``element_energy_offsets``, (n_elements,) Hartree); "atomic_energy_sum" (B,)
Hartree = sum_A e0[Z_A] + "learned_energy" (B,), the learned per-atom energies summed per molecule.

Energy paths (config ``energy_path``). "hamiltonian": the energy E_nn + 1/2 Tr[P (F + h + Delta h)] +
"atomic_energy_sum" is computed from F outside the network (``ase_wavecalc.energy``), with the optional
per-atom correction below. "readout": the network's own total energy, out["energy"] (B,) Hartree =
sum_A e0[Z_A] + 0.01 * MLP([invariants of atom A, one-hot Z_A]), the invariants being, for the output of
every interaction block, the 0e channels and the squared norm of every (irrep, channel) (smooth at zero,
unlike a norm): the atom features that F is read from also carry the energy, and F, orbitals and density
stay the same model's. ``forward(..., energy_only=True)`` then runs the atom trunk and the MLP only (no
pair features, no F): the fast path of MD and optimizers.

The per-atom correction (``atom_correction_mlp``, width ``atom_correction_hidden``; energy_path
"hamiltonian") reads the invariant channels of the final atom features, or, with ``energy_layers > 0``,
of a separate, smaller trunk (``energy_channels`` x irreps up to ``energy_lmax``) that shares only the
edge frames and radial basis. That trunk lets a training stage add an accurate energy correction on top
of a frozen Fock network (``run.trainable = "atom_correction"``).

Scatter sums use torch's own ``index_add`` rather than torch-scatter: torch-scatter has no wheels for
current torch and takes minutes to compile, and ``index_add`` is just as fast at this size.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..basis import BasisLayout
from .blocks import BlockReadout, MatrixIndex, build_matrix_index
from .layers import (ConstantsMixin, EdgeGate, EdgeLinear, FeatureLayout, NodeGate, NodeLinear, WignerD,
                     edge_frame, rotate_in, rotate_out, scale_edge)
from .so2 import SO2Conv
from .radial import BesselBasis, PolynomialEnvelope, RadialMLP
from .config import (DEFAULT_CONFIG, ENERGY_PATHS, MODEL_TYPE, _resolve_config, canonical_state_dict,
                     default_config)
from .readout import Standardize, atom_invariants

__all__ = ["HamiltonianModel", "build_model", "default_config", "DEFAULT_CONFIG", "MODEL_TYPE", "ENERGY_PATHS"]

READOUT_ENERGY_SCALE = 0.01  # Hartree per unit output of the readout MLP
ATOM_CORRECTION_SCALE = 0.01  # Hartree per unit output of the per-atom correction MLP
_SQRT_HALF = math.sqrt(0.5)


class _ScaleHead(ConstantsMixin, nn.Module):
    """Invariant MLP outputs -> per-(|m|, irrep, channel) edge-frame scalings (n_irm, E, C).

    s[(|m|, q), c] = a[q, c] * b[(|m|, q)]: a per (irrep, channel) factor times a channel-shared
    per-(|m|, irrep) factor (C * n_irreps + n_irm numbers per edge instead of C * n_irm). Both are
    invariant under rotations about the bond and its mirror planes, so scaling edge-frame features by
    them keeps equivariance; the |m| factor gives sigma (m = 0), pi (|m| = 1), delta ... couplings their
    own distance dependence.
    """

    def __init__(self, layout: FeatureLayout, channels: int):
        super().__init__()
        self.layout, self.channels = layout, int(channels)
        self.size = self.channels * layout.n_irreps + layout.n_irm
        self.register_constant("irm_irrep", layout.irm_irrep)

    def forward(self, r: torch.Tensor, env: torch.Tensor | None = None) -> torch.Tensor:
        E, C, nq = r.shape[0], self.channels, self.layout.n_irreps
        a, b = torch.split(r, [C * nq, self.layout.n_irm], 1)
        if env is not None:
            b = b * env[:, None]
        return a.view(E, nq, C).transpose(0, 1).index_select(0, self.irm_irrep) * b.T[:, :, None]

    def scalar(self, r: torch.Tensor, env: torch.Tensor | None = None) -> torch.Tensor:
        """The (m = 0, 0e) row of ``forward`` only: (E, C)."""
        C = self.channels
        a, b = torch.split(r, [C, r.shape[1] - C], 1)
        b = b[:, :1] if env is None else b[:, :1] * env[:, None]  # (0, 0e) is pair 0
        return a * b


class Interaction(nn.Module):
    """One message-passing block: h (N, D, C) l-order -> (N, D, C). irreps_in = irreps_out = C x layout.

    message_ij = D(Q_ij) [ S_out * SO2Conv( S_in * D(Q_ij)^T Linear(h_j) ) ], S = radial scalings
    (``_ScaleHead`` of an MLP of Bessel functions; the envelope multiplies S_in, so messages vanish
    smoothly at the cutoff); h_i <- h_i + Gate(Linear(sum_j message_ij / sqrt(avg_num_neighbors))
    + Linear(h_i)).
    """

    def __init__(self, layout: FeatureLayout, channels: int, num_radial: int, radial_hidden: int,
                 avg_num_neighbors: float, n_elements: int):
        super().__init__()
        self.layout, self.channels = layout, channels
        self.irreps_in = self.irreps_out = layout.irreps_str(channels)
        self.lin_pre = NodeLinear(layout, channels, channels)
        self.scale_in = _ScaleHead(layout, channels)
        self.scale_out = _ScaleHead(layout, channels)
        # edge MLP of the Bessel functions and both elements (one-hot): element-pair-dependent radial
        # functions. Not of the features themselves: the scalings multiply the features, and a feedback of
        # the features into their own scale made activations explode with depth.
        self.radial = RadialMLP(num_radial + 2 * n_elements, radial_hidden, 2 * self.scale_in.size)
        self.conv = SO2Conv(layout, channels)
        self.lin_post = NodeLinear(layout, channels, channels, init_scale=0.1)
        self.lin_self = NodeLinear(layout, channels, channels)
        self.gate = NodeGate(layout, channels)
        self.norm = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(self, h, Ds, edge_attr, env, src, dst, scalar_input: bool = False):
        x = self.lin_pre(h)
        r_in, r_out = torch.split(self.radial(edge_attr), self.scale_in.size, 1)
        s_out = self.scale_out(r_out)
        if scalar_input:  # only 0e is non-zero (and rotation-invariant): skip the rotation in
            mt = self.conv.forward_scalar(x[:, 0][src] * self.scale_in.scalar(r_in, env), s_out)
        else:
            mt = self.conv(rotate_in(x[src], Ds, self.layout), self.scale_in(r_in, env), s_out)
        m = rotate_out(mt, Ds, self.layout)
        agg = torch.zeros_like(h).index_add_(0, dst, m) * self.norm
        return h + self.gate((self.lin_post(agg) + self.lin_self(h)) * _SQRT_HALF)


class PairFeatures(nn.Module):
    """Features of every ordered pair (i, j): h (N, D, C) -> (E, D, Cp) lab frame, l-order.

    In the bond frame of (i, j): Linear(h_i) and Linear'(h_j) (Cp channels each) are scaled, sent
    through the edge-frame tensor product and summed, then scaled again. The scalings come from an MLP
    of the pair's invariants: the m = 0 natural-parity components of both atoms' features in the bond
    frame, Bessel functions of the distance (times an envelope at ``pair_cutoff``) and both elements, so
    the block depends jointly on the two environments. ``pair_layers`` residual blocks
    (EdgeLinear -> EdgeGate -> SO2Conv) follow.
    """

    def __init__(self, layout: FeatureLayout, channels: int, pair_channels: int, n_elements: int,
                 num_radial: int, hidden: int, cutoff: float, envelope_exponent: int, num_layers: int):
        super().__init__()
        self.layout, self.cp = layout, pair_channels
        self.irreps_in = layout.irreps_str(channels)
        self.irreps_out = layout.irreps_str(pair_channels)
        self.n_elements = n_elements
        self.lin = NodeLinear(layout, channels, 2 * pair_channels)
        self.rbf = BesselBasis(num_radial, cutoff)
        self.env = PolynomialEnvelope(cutoff, envelope_exponent)
        self.scale_in = _ScaleHead(layout, 2 * pair_channels)
        self.scale_out = _ScaleHead(layout, pair_channels)
        n_inv = 2 * pair_channels * len(layout.m0_invariant) + num_radial + 2 * n_elements
        self.filter = RadialMLP(n_inv, hidden, self.scale_in.size + self.scale_out.size, num_hidden_layers=1,
                                bias=True)
        self.conv = SO2Conv(layout, 2 * pair_channels)
        self.blocks = nn.ModuleList()
        for _ in range(num_layers):
            self.blocks.append(nn.ModuleList([EdgeLinear(layout, pair_channels, pair_channels, bias=True),
                                              EdgeGate(layout, pair_channels),
                                              SO2Conv(layout, pair_channels)]))
        self.register_buffer("m0_invariant", layout.m0_invariant.clone(), persistent=False)

    def forward(self, h, Ds, d, src, dst, elem):
        E, cp = src.shape[0], self.cp
        N, D = h.shape[0], self.layout.dim
        # the two roles (features of i, features of j) as a batch of 2E edge rows 2e + role: one gather
        # and no channel concatenation; the bond frame is the same for both rows of an edge
        xr = self.lin(h).view(N, D, 2, cp).transpose(1, 2).reshape(2 * N, D, cp)
        xe = xr[torch.stack([2 * dst, 2 * src + 1], 1).reshape(-1)]    # (2E, D, Cp)
        xt = rotate_in(xe, [Dl.repeat_interleave(2, 0) for Dl in Ds], self.layout)   # (D, 2E, Cp)
        onehot = torch.nn.functional.one_hot(elem, self.n_elements).to(h.dtype)
        env = self.env(d)
        proj = xt[self.m0_invariant].view(-1, E, 2 * cp).transpose(0, 1).reshape(E, -1)
        # unit root-mean-square per edge (an invariant scalar): the filter multiplies the features, so
        # its input must not scale with them (that feedback is unstable)
        proj = proj * torch.rsqrt(proj.square().mean(1, keepdim=True) + 1e-6)
        inv = torch.cat([proj, self.rbf(d) * env[:, None], onehot[dst], onehot[src]], -1)
        s_in, s_out = torch.split(self.filter(inv), [self.scale_in.size, self.scale_out.size], 1)
        s_in = self.scale_in(s_in).view(-1, 2 * E, cp)                  # (n_irm, 2E, Cp)
        pt = self.conv(xt, s_in).view(D, E, 2, cp).sum(2)               # sum of the two roles
        pt = scale_edge(pt, self.scale_out(s_out), self.layout)
        for lin, gate, conv in self.blocks:
            pt = pt + conv(gate(lin(pt)))
        # off-diagonal blocks go smoothly to zero at pair_cutoff
        return rotate_out(pt * env[None, :, None], Ds, self.layout)


class HamiltonianModel(nn.Module):
    """Equivariant Fock-matrix network; build it with :func:`build_model` (see module docstring)."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = _resolve_config(config)
        self.config = cfg
        self.basis_layout = BasisLayout(cfg["basis"], cfg["elements"])
        self.elements = tuple(cfg["elements"])
        self.layout = FeatureLayout(cfg["lmax"], cfg["parity"])
        self.heads = 2 if cfg["delta_hcore_head"] else 1    # F, and Delta h with delta_hcore_head
        C, n_el = cfg["channels"], len(self.elements)
        self.irreps_hidden = self.layout.irreps_str(C)

        self.embedding = nn.Parameter(torch.randn(n_el, C))
        self.wigner = WignerD(cfg["lmax"])
        self.rbf = BesselBasis(cfg["num_radial"], cfg["cutoff"])
        self.envelope = PolynomialEnvelope(cfg["cutoff"], cfg["envelope_exponent"])
        self.interactions = nn.ModuleList([
            Interaction(self.layout, C, cfg["num_radial"], cfg["radial_hidden"], cfg["avg_num_neighbors"],
                        n_el)
            for _ in range(cfg["num_layers"])])
        self.pair = PairFeatures(self.layout, C, cfg["pair_channels"], n_el, cfg["pair_num_radial"],
                                 cfg["pair_hidden"], cfg["pair_cutoff"], cfg["envelope_exponent"],
                                 cfg["pair_layers"])
        bl = self.basis_layout
        self.atom_readout = nn.ModuleDict()
        self.pair_readout = nn.ModuleDict()
        for za in self.elements:
            pa = bl.e3nn_to_pyscf(za)
            self.atom_readout[str(za)] = BlockReadout(self.layout, C, self.heads, bl.shells(za),
                                                      bl.shells(za), pa, pa, diagonal=True, bias=True)
            for zb in self.elements:
                self.pair_readout[f"{za}-{zb}"] = BlockReadout(
                    self.layout, cfg["pair_channels"], self.heads, bl.shells(za), bl.shells(zb), pa,
                    bl.e3nn_to_pyscf(zb), diagonal=False, bias=False)
        # e0[Z] (n_elements,) Hartree, index = position in config "elements"; the trainer sets it
        self.element_energy_offsets = nn.Parameter(torch.zeros(n_el))
        hidden = cfg["atom_correction_hidden"]
        if cfg["energy_layers"]:
            # the correction's own trunk: same edge frames and radial basis, its own embedding and
            # (smaller) features. A stage that trains only the energy leaves F bit-identical, and the
            # force loss's second derivative then never runs through the Fock trunk's weights.
            Ce = cfg["energy_channels"]
            self.energy_layout = FeatureLayout(cfg["energy_lmax"], cfg["parity"])
            self.energy_embedding = nn.Parameter(torch.randn(n_el, Ce))
            self.energy_interactions = nn.ModuleList([
                Interaction(self.energy_layout, Ce, cfg["num_radial"], cfg["radial_hidden"],
                            cfg["avg_num_neighbors"], n_el)
                for _ in range(cfg["energy_layers"])])
            n_feat = Ce
        else:
            self.energy_layout, self.energy_embedding, self.energy_interactions = None, None, None
            n_feat = C
        if hidden:
            # learned per-atom correction (Hartree) from the invariant (0e) channels of the final atom
            # features (of the energy trunk when there is one) and the element; the last layer starts at
            # zero, so a model trained without it (stage 1) keeps its energies until the correction learns
            self.atom_correction_mlp = nn.Sequential(nn.Linear(n_feat + n_el, hidden), nn.SiLU(),
                                                     nn.Linear(hidden, hidden), nn.SiLU(),
                                                     nn.Linear(hidden, 1))
            nn.init.zeros_(self.atom_correction_mlp[-1].weight)
            nn.init.zeros_(self.atom_correction_mlp[-1].bias)
        else:
            self.atom_correction_mlp = None
        self.readout_mlp = self.readout_norm = self.transfer_weight = self.committee_mlps = None
        if cfg["energy_path"] == "readout":
            # per-atom energy from the invariants of every interaction block's output: the 0e channels and
            # the squared norm of each (irrep, channel); the last layer starts at zero (E = sum e0)
            n_in = cfg["num_layers"] * C * (1 + self.layout.n_irreps) + n_el
            if self.energy_interactions is not None:   # the energy trunk's invariants beside the Fock trunk's
                n_in += cfg["energy_layers"] * cfg["energy_channels"] * (1 + self.energy_layout.n_irreps)
                self.register_buffer("energy_irrep_of_component", self.energy_layout.comp_irrep_l.clone(),
                                     persistent=False)
            width = cfg["readout_hidden"]
            self.readout_mlp = nn.Sequential(nn.Linear(n_in, width), nn.SiLU(), nn.Linear(width, width),
                                             nn.SiLU(), nn.Linear(width, 1))
            # fixed standardization of the invariants (set from training frames before training): their
            # scales span 1e-4 (squared norms of high-L Fock features) to 10, which an MLP sees badly
            self.readout_norm = Standardize(n_in - n_el) if cfg["readout_standardize"] else None
            nn.init.zeros_(self.readout_mlp[-1].weight)
            nn.init.zeros_(self.readout_mlp[-1].bias)
            # uncertainty: a committee of readout MLPs on the same inputs (train.committee fits them)
            self.committee_mlps = (nn.ModuleList(
                [nn.Sequential(nn.Linear(n_in, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                               nn.Linear(width, 1)) for _ in range(cfg["committee_size"])])
                if cfg["committee_size"] else None)
            # transfer learning: a linear, per-element function of the same standardized invariants (Hartree),
            # zero until fitted (train.transfer)
            self.transfer_weight = (nn.Parameter(torch.zeros(n_el, n_in - n_el, dtype=torch.get_default_dtype()))
                                    if cfg["transfer_head"] else None)
            self.register_buffer("irrep_of_component", self.layout.comp_irrep_l.clone(), persistent=False)
        self._index_cache: OrderedDict = OrderedDict()

    # ------------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # names of earlier versions (config.PARAMETER_ALIASES); children then read the renamed keys
        renamed = canonical_state_dict(state_dict, prefix)
        if list(renamed) != list(state_dict):
            state_dict.clear()
            state_dict.update(renamed)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def n_parameters(self) -> int:
        """Trainable parameters that influence the output (masked readout padding excluded)."""
        n = 0
        for name, p in self.named_parameters():
            if name.endswith(".weight") and ("atom_readout" in name or "pair_readout" in name):
                continue
            if name.endswith(".bias") and ("atom_readout" in name or "pair_readout" in name):
                continue
            n += p.numel()
        for ro in list(self.atom_readout.values()) + list(self.pair_readout.values()):
            n += ro.n_effective_parameters
        return n

    def set_mean_block(self, z: int, block) -> None:
        """Set element ``z``'s diagonal-block biases to the invariant part of a mean atom block (Hartree)."""
        self.atom_readout[str(int(z))].set_mean_block(block)

    def matrix_index(self, numbers: torch.Tensor, batch: torch.Tensor | None) -> MatrixIndex:
        """Edges and block placement for this composition (cached: training repeats compositions)."""
        nums = numbers.detach().cpu().numpy().astype(np.int64)
        bat = (np.zeros(len(nums), dtype=np.int64) if batch is None
               else batch.detach().cpu().numpy().astype(np.int64))
        key = (nums.tobytes(), bat.tobytes(), str(numbers.device))
        idx = self._index_cache.get(key)
        if idx is None:
            idx = build_matrix_index(self.basis_layout, self.elements, nums, bat, numbers.device)
            self._index_cache[key] = idx
            while len(self._index_cache) > 32:
                self._index_cache.popitem(last=False)
        else:
            self._index_cache.move_to_end(key)
        return idx

    def forward(self, numbers: torch.Tensor, positions: torch.Tensor,
                batch: torch.Tensor | None = None, energy_only: bool = False) -> dict:
        """The outputs of the module docstring. ``energy_only=True`` (models with ``energy_layers``):
        only "atomic_energy_sum" and "learned_energy", without the Fock trunk (training the correction on a
        frozen Hamiltonian whose energies were computed once)."""
        if numbers.dim() != 1 or positions.shape != (numbers.shape[0], 3):
            raise ValueError(f"numbers (N,) and positions (N, 3) expected, got {tuple(numbers.shape)} and "
                             f"{tuple(positions.shape)}")
        if batch is not None and batch.shape != numbers.shape:
            raise ValueError("batch must have the shape of numbers")
        ix = self.matrix_index(numbers, batch)
        dtype = self.embedding.dtype
        pos = positions.to(dtype)
        vec = (pos[ix.src] - pos[ix.dst])[:, [1, 2, 0]]          # r_j - r_i, fed to e3nn as (y, z, x)
        d = torch.linalg.norm(vec, dim=-1)
        if d.numel() and float(d.detach().min()) < 1e-3:
            raise ValueError("two atoms (almost) coincide")
        Ds = self.wigner(edge_frame(vec / d[:, None]))
        env = self.envelope(d)
        onehot = torch.nn.functional.one_hot(ix.elem, len(self.elements)).to(dtype)
        edge_attr = torch.cat([self.rbf(d), onehot[ix.dst], onehot[ix.src]], 1)

        if energy_only and self.readout_mlp is not None:
            # the energy path of a "readout" model: the atom trunk and the MLP, no pair features, no F
            h, layers = self._trunk(ix, Ds, edge_attr, env)
            return self._readout_energy({}, layers, ix, Ds, edge_attr, env, onehot)
        if energy_only:
            if self.energy_interactions is None:
                raise ValueError("energy_only needs a model with energy_layers > 0 or energy_path = 'readout'")
            out = {"atomic_energy_sum": torch.zeros(ix.n_mol, dtype=dtype, device=pos.device).index_add(
                0, ix.batch, self.element_energy_offsets[ix.elem])}
            return self._add_atom_correction(out, None, ix, Ds, edge_attr, env, onehot)
        h, layers = self._trunk(ix, Ds, edge_attr, env)
        p = self.pair(h, Ds, d, ix.src, ix.dst, ix.elem) if len(ix.src) else None

        values = []
        pair_parts = iter(torch.split(p, ix.pair_sizes, 0)) if p is not None else None
        for kind, key, items, _n in ix.groups:
            if kind == "atom":
                v = self.atom_readout[str(key)](h[items])
            else:  # edges are sorted by element pair: contiguous ranges (split, no gather)
                v = self.pair_readout[f"{key[0]}-{key[1]}"](next(pair_parts))
            values.append(v.transpose(0, 1).reshape(self.heads, -1))
        flat = torch.cat(values, 1)[:, ix.gather]                  # (heads, total) back-to-back matrices

        out = {}
        names = ["fock", "delta_hcore"][: self.heads]
        for hd, name in enumerate(names):
            if ix.same_composition:
                n = ix.nao[0]
                m = flat[hd].view(ix.n_mol, n, n)
                out[name] = 0.5 * (m + m.transpose(1, 2))
            else:
                mats = []
                for b in range(ix.n_mol):
                    n = ix.nao[b]
                    m = flat[hd, ix.offsets[b]:ix.offsets[b] + n * n].view(n, n)
                    mats.append(0.5 * (m + m.T))
                out[name] = mats
        if self.readout_mlp is not None:
            return self._readout_energy(out, layers, ix, Ds, edge_attr, env, onehot)
        e0 = self.element_energy_offsets[ix.elem]
        out["atomic_energy_sum"] = pos.new_zeros(ix.n_mol).index_add(0, ix.batch, e0)
        return self._add_atom_correction(out, h, ix, Ds, edge_attr, env, onehot)

    def _trunk(self, ix, Ds, edge_attr, env):
        """The Fock trunk's atom features: (final h (N, D, C), list of every block's output)."""
        layers = _run_blocks(self.embedding, self.interactions, self.layout, ix, Ds, edge_attr, env)
        return layers[-1], layers

    def _energy_trunk(self, ix, Ds, edge_attr, env) -> list:
        """Every block output (N, D_e, C_e) of the energy trunk (``energy_layers``)."""
        return _run_blocks(self.energy_embedding, self.energy_interactions, self.energy_layout, ix, Ds,
                           edge_attr, env)

    def _readout_energy(self, out, layers, ix, Ds, edge_attr, env, onehot) -> dict:
        """energy_path = "readout": out["energy"] (B,) Hartree = sum_A e0[Z_A] + MLP(invariants of A): those
        of every Fock-trunk block and, with ``energy_layers``, of every energy-trunk block; with
        ``transfer_head`` + sum_A w[Z_A] . x_A (x: the standardized invariants), also as
        out["transfer_correction"] (B,); with ``committee_size`` K, out["energy_committee"] (B, K): the
        energies of K more readout MLPs on the same inputs (their spread is the uncertainty). The learned part
        (MLP + transfer head) is out["learned_energy"] (B,), out["atomic_energy_sum"] = out["energy"]."""
        e0 = self.element_energy_offsets[ix.elem]
        inv = [atom_invariants(layers, self.irrep_of_component, self.layout.n_irreps)]
        if self.energy_interactions is not None:
            inv.append(atom_invariants(self._energy_trunk(ix, Ds, edge_attr, env), self.energy_irrep_of_component,
                                       self.energy_layout.n_irreps))
        inv = torch.cat(inv, 1)
        out["readout_inputs"] = inv.detach()
        if self.readout_norm is not None:
            inv = self.readout_norm(inv)
        x = torch.cat([inv, onehot], 1)
        per_atom = READOUT_ENERGY_SCALE * self.readout_mlp(x)[:, 0]
        zero = onehot.new_zeros(ix.n_mol)
        if self.committee_mlps is not None:   # (B, K) energies of the committee members
            members = READOUT_ENERGY_SCALE * torch.cat([m(x) for m in self.committee_mlps], 1)
            base = zero.index_add(0, ix.batch, e0)
            out["energy_committee"] = base[:, None] + onehot.new_zeros(ix.n_mol, members.shape[1]).index_add(
                0, ix.batch, members)
        if self.transfer_weight is not None:
            transfer = (self.transfer_weight[ix.elem] * inv).sum(-1)
            out["transfer_correction"] = zero.index_add(0, ix.batch, transfer)
            per_atom = per_atom + transfer
        out["learned_energy"] = zero.index_add(0, ix.batch, per_atom)
        out["atomic_energy_sum"] = out["energy"] = zero.index_add(0, ix.batch, e0) + out["learned_energy"]
        return out

    def _add_atom_correction(self, out, h, ix, Ds, edge_attr, env, onehot) -> dict:
        """Add the learned per-atom correction (if any), summed per molecule (B,) Hartree, to
        ``out["atomic_energy_sum"]`` and as ``out["learned_energy"]``."""
        if self.atom_correction_mlp is None:
            return out
        if self.energy_interactions is not None:
            inv = self._energy_trunk(ix, Ds, edge_attr, env)[-1][:, 0, :]
        else:
            inv = h[:, 0, :]
        per_atom = ATOM_CORRECTION_SCALE * self.atom_correction_mlp(torch.cat([inv, onehot], 1))[:, 0]
        learned = onehot.new_zeros(ix.n_mol).index_add(0, ix.batch, per_atom)
        out["learned_energy"] = learned
        out["atomic_energy_sum"] = out["atomic_energy_sum"] + learned
        return out


def _run_blocks(embedding, blocks, layout, ix, Ds, edge_attr, env) -> list:
    """A message-passing trunk from element embeddings (n_elements, C): every block's output (N, D, C)."""
    x0 = embedding[ix.elem]
    h = torch.cat([x0[:, None, :], x0.new_zeros(x0.shape[0], layout.dim - 1, x0.shape[1])], 1)
    layers = []
    for k, block in enumerate(blocks):
        h = block(h, Ds, edge_attr, env, ix.src, ix.dst, scalar_input=(k == 0))
        layers.append(h)
    return layers


def build_model(config: dict) -> HamiltonianModel:
    """Build a :class:`HamiltonianModel` from a JSON-serializable config (missing keys take defaults).

    ``model.config`` holds the fully resolved config (every key, ``lmax`` filled in); it alone
    determines the architecture and is what ``save_model`` writes into the model card.
    """
    return HamiltonianModel(config)
