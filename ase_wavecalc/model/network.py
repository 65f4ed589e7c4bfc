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

Energy paths (config ``energy_path``; each an object of ``ase_wavecalc.energy_paths``, ``self.energy_path``,
that builds its modules here and computes the energy outputs of ``forward``). "hamiltonian": the energy E_nn + 1/2 Tr[P (F + h + Delta h)] +
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

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from ..basis import BasisLayout
from .blocks import BlockReadout, MatrixIndex, build_matrix_index
from .layers import (EdgeGate, EdgeLinear, FeatureLayout, NodeLinear, WignerD, edge_frame, rotate_in,
                     rotate_out, scale_edge)
from .so2 import SO2Conv
from .radial import BesselBasis, PolynomialEnvelope, RadialMLP
from .config import (DEFAULT_CONFIG, ENERGY_PATHS, MODEL_TYPE, _resolve_config, canonical_state_dict,
                     default_config)
from .interaction import EdgeContext, Interaction, ScaleHead, run_blocks
from ..energy_paths import energy_path_for
from ..energy_paths.hamiltonian import ATOM_CORRECTION_SCALE  # noqa: F401  (re-exported: earlier home)
from ..energy_paths.readout import READOUT_ENERGY_SCALE  # noqa: F401  (re-exported: earlier home)

__all__ = ["HamiltonianModel", "build_model", "default_config", "DEFAULT_CONFIG", "MODEL_TYPE", "ENERGY_PATHS",
           "ATOM_CORRECTION_SCALE", "READOUT_ENERGY_SCALE"]


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
        self.scale_in = ScaleHead(layout, 2 * pair_channels)
        self.scale_out = ScaleHead(layout, pair_channels)
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


@torch.compiler.disable      # a check on values: in a compiled graph it would recompile for every geometry
def _refuse_coinciding_atoms(d: torch.Tensor) -> None:
    """ValueError if two atoms are closer than 1e-3 Bohr (``d``: the edge lengths, (E,))."""
    if d.numel() and float(d.detach().min()) < 1e-3:
        raise ValueError("two atoms (almost) coincide")


class HamiltonianModel(nn.Module):
    """Equivariant Fock-matrix network; build it with :func:`build_model` (see module docstring)."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = _resolve_config(config)
        self.config = cfg
        self.basis_layout = BasisLayout(cfg["basis"], cfg["elements"])
        self.elements = tuple(cfg["elements"])
        self.layout = FeatureLayout(cfg["lmax"], cfg["parity"])
        #: how the model computes its energy (selected once from the config): ase_wavecalc.energy_paths
        self.energy_path = energy_path_for(cfg)
        self.heads = self.energy_path.heads     # F, and Delta h on the Hamiltonian path
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
        # the energy path's modules (energy trunk, correction or readout MLPs, ...): energy_paths/
        self.energy_path.build(self, cfg)
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

    @torch.compiler.disable      # host-side bookkeeping: torch.compile leaves it out of the graph
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
                batch: torch.Tensor | None = None, energy_only: bool = False,
                fock_invariants: torch.Tensor | None = None) -> dict:
        """The outputs of the module docstring. ``energy_only=True`` (models with ``energy_layers``):
        only "atomic_energy_sum" and "learned_energy", without the Fock trunk (training the correction on a
        frozen Hamiltonian whose energies were computed once). ``fock_invariants`` (N, M), with
        ``energy_only`` and the readout path: the Fock trunk's invariant atom descriptors given rather than
        computed (a frozen trunk's, ``train/frozen_trunk.py``)."""
        if fock_invariants is not None and not (energy_only and self.energy_path.name == "readout"):
            raise ValueError("fock_invariants needs energy_only=True and energy_path = 'readout'")
        ctx = self.edge_context(numbers, positions, batch, fock_invariants)
        if energy_only:
            return self.energy_path.energy_only_outputs(self, ctx)
        layers = self.fock_trunk(ctx)
        h, ix = layers[-1], ctx.ix
        p = self.pair(h, ctx.Ds, ctx.d, ix.src, ix.dst, ix.elem) if len(ix.src) else None

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
        return self.energy_path.outputs(self, out, layers, ctx)

    def edge_context(self, numbers: torch.Tensor, positions: torch.Tensor, batch: torch.Tensor | None = None,
                     fock_invariants: torch.Tensor | None = None) -> EdgeContext:
        """The per-batch quantities every trunk reads (edges, bond frames, radial basis, envelope, one-hot)."""
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
        _refuse_coinciding_atoms(d)
        Ds = self.wigner(edge_frame(vec / d[:, None]))
        env = self.envelope(d)
        onehot = torch.nn.functional.one_hot(ix.elem, len(self.elements)).to(dtype)
        edge_attr = torch.cat([self.rbf(d), onehot[ix.dst], onehot[ix.src]], 1)

        return EdgeContext(ix, Ds, edge_attr, env, onehot, d, fock_invariants)

    def fock_trunk(self, ctx: EdgeContext) -> list:
        """The Fock trunk's atom features: every block's output (N, D, C), the last one the final h."""
        return run_blocks(self.embedding, self.interactions, self.layout, ctx.ix, ctx.Ds, ctx.edge_attr, ctx.env)


def build_model(config: dict) -> HamiltonianModel:
    """Build a :class:`HamiltonianModel` from a JSON-serializable config (missing keys take defaults).

    ``model.config`` holds the fully resolved config (every key, ``lmax`` filled in); it alone
    determines the architecture and is what ``save_model`` writes into the model card.
    """
    return HamiltonianModel(config)
