"""The energy path as one object (``ase_wavecalc.energy_paths``): selected once from the config and card,
it owns the network's energy modules, the provider's energy and gradient, the weights each training phase
trains and the card's entry; the provider protocol, which the wrapper providers forward in full.

Checked: selection (old key names too), a path is one object through copies and pickles, every phase of
every path trains exactly the parameters it names (and F stays bit-identical where it is frozen), each
path's gradient is the finite-difference derivative of its energy through the provider, the no-energy
path refuses energies and Hessians, the card entry; every provider satisfies ``Provider`` and the wrappers
implement each capability themselves; with ``out_of_domain="reference"`` a shipped model's Hessian and
``forces_std`` are the model's on an in-domain geometry.
"""
import copy
import pickle

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.calculator import PropertyNotImplementedError

from ase_wavecalc import WaveCalculator
from ase_wavecalc.energy_paths import (ENERGY_PATHS, NO_ENERGY, PHASES, HamiltonianEnergy, NoEnergy, ReadoutEnergy,
                                       energy_path_for)
from ase_wavecalc.model.network import build_model, default_config
from ase_wavecalc.providers import ModelProvider, ReferenceFallback, SCFRefinedProvider
from ase_wavecalc.providers.base import CAPABILITIES, HamiltonianProvider, Provider
from ase_wavecalc.train.config import TrainingError

SMALL = dict(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1, pair_channels=4, radial_hidden=8,
             pair_hidden=8)
#: one model per path, with every optional part of the path
CONFIGS = {
    "hamiltonian": dict(delta_hcore_head=True, atom_correction_hidden=8, energy_layers=1, energy_channels=4),
    "readout": dict(energy_path="readout", readout_hidden=8, energy_layers=1, energy_channels=4,
                    readout_standardize=True, committee_size=2, transfer_head=True),
    "none": {},
}
WATER = torch.tensor([[0.0, 0.0, 0.0], [1.8, 0.0, 0.1], [-0.4, 1.7, 0.0]], dtype=torch.float64)
Z = torch.tensor([8, 1, 1])


def _model(path: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(default_config(**SMALL, **CONFIGS[path])).double()
    with torch.no_grad():   # every learned part non-zero (last layers start at zero), F with an open gap
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model


# ----------------------------------------------------------------------------------------------------
# selection

def test_the_path_is_selected_once_from_config_and_card():
    assert isinstance(energy_path_for({"energy_path": "readout"}), ReadoutEnergy)
    assert isinstance(energy_path_for({"delta_hcore_head": True}), HamiltonianEnergy)
    assert isinstance(energy_path_for({"energy_head": True}), HamiltonianEnergy)     # the old key name
    assert energy_path_for({}) is NO_ENERGY                                           # F only
    assert energy_path_for({"energy_path": "readout"}, {"energy_trained": False}) is NO_ENERGY
    with pytest.raises(ValueError, match="energy_path"):
        energy_path_for({"energy_path": "density"})
    for name, extra in CONFIGS.items():
        model = _model(name)
        assert model.energy_path is ENERGY_PATHS[name] is energy_path_for(model.config)
        assert copy.deepcopy(model).energy_path is model.energy_path                 # one object per path
        assert pickle.loads(pickle.dumps(model.energy_path)) is model.energy_path
    assert set(PHASES) == {"all", "delta_hcore_head", "atom_correction", "energy_readout", "transfer_head"}


def test_card_entries_name_the_path():
    for name, path in ENERGY_PATHS.items():
        entries = path.card_entries()
        assert entries["energy_path"]["name"] == name and entries["energy_path"]["formula"]
        assert entries["energy_trained"] is (name != "none")
    assert ENERGY_PATHS["readout"].trained_by({"fock_mae": 1.0}) is NO_ENERGY   # no energy terms: no energy
    assert ENERGY_PATHS["readout"].trained_by({"forces": 1.0}).name == "readout"


# ----------------------------------------------------------------------------------------------------
# (c) training phases

@pytest.mark.parametrize("path,phase", [(p, ph) for p in CONFIGS for ph in ENERGY_PATHS[p].phases])
def test_a_phase_trains_exactly_the_parameters_it_names(path, phase):
    """After freezing, the parameters that require grad are the phase's; optimizer steps on every output move
    only those, and each part the phase names (for the Delta h head phase: head 1 of the block readouts),
    while F stays bit-identical."""
    model = _model(path)
    before = model(Z, WATER, None)
    selected = model.energy_path.phase(phase, {"energy": 1.0, "forces": 1.0})
    n = selected.freeze(model)
    names = selected.trainable_names(model)
    assert {k for k, p in model.named_parameters() if p.requires_grad} == set(names)
    assert n > 0 and (phase != "all" or n == sum(p.numel() for p in model.parameters()))
    start = {k: p.detach().clone() for k, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    for _ in range(2):
        out = model(Z, WATER, None)
        loss = sum(v.square().sum() for k, v in out.items() if torch.is_tensor(v) and v.requires_grad)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = {k for k, p in model.named_parameters() if not torch.equal(p, start[k])}
    assert moved <= set(names)
    if phase != "all":   # every part the phase names learns (not every tensor: the correction reads only
        for prefix in selected.learns:        # the 0e channels of its trunk, not the gates of the others)
            owned = [k for k in names if k.startswith(prefix)]
            assert not owned or moved & set(owned), prefix
        if selected.masked is not None:
            assert any(k.startswith(("atom_readout.", "pair_readout.")) for k in moved)
        after = model(Z, WATER, None)
        assert torch.allclose(after["fock"], before["fock"], rtol=0, atol=1e-12)           # F is frozen in every energy phase


def test_phases_of_other_paths_are_refused_with_what_they_need():
    with pytest.raises(TrainingError, match="needs \\[model\\] energy_path = 'readout'"):
        energy_path_for(CONFIGS["hamiltonian"]).phase("energy_readout", {})
    with pytest.raises(TrainingError, match="delta_hcore_head = true"):
        NO_ENERGY.phase("delta_hcore_head", {})
    no_trunk = build_model(default_config(**SMALL, delta_hcore_head=True))
    with pytest.raises(TrainingError, match="energy trunk"):
        no_trunk.energy_path.phase("atom_correction", {"energy": 1.0}).freeze(no_trunk)
    # a readout without F terms runs the energy part alone; with them, the whole network
    assert ENERGY_PATHS["readout"].phase("all", {"energy": 1.0}).energy_only
    assert not ENERGY_PATHS["readout"].phase("all", {"fock_mae": 1.0, "energy": 1.0}).energy_only


# ----------------------------------------------------------------------------------------------------
# (b) energy and gradient through the provider

@pytest.mark.parametrize("path", ["hamiltonian", "readout"])
def test_each_paths_gradient_is_the_derivative_of_its_energy(path):
    model = _model(path)
    if path == "hamiltonian":   # an open gap: F = the atom blocks of h_core plus a small random part
        from ase_wavecalc.integrals import core_hamiltonian, make_mol

        hcore = torch.as_tensor(core_hamiltonian(make_mol([8, 1, 1], WATER.numpy(), "sto-3g")))
        with torch.no_grad():
            for ro in list(model.pair_readout.values()) + list(model.atom_readout.values()):
                ro.weight.mul_(0.01)
        for z, sl in zip((8, 1), model.basis_layout.ao_slices([8, 1])):
            model.set_mean_block(z, hcore[sl, sl].clone())
    provider = ModelProvider(model, card={"name": path})
    pos = WATER.numpy()
    result = provider.compute(Z.numpy(), pos, want_gradient=True)
    step, fd = 1e-4, np.zeros_like(pos)
    for a in range(3):
        for x in range(3):
            e = []
            for k in (-1, 1):
                p = pos.copy()
                p[a, x] += k * step
                e.append(provider.compute(Z.numpy(), p).energy)
            fd[a, x] = (e[1] - e[0]) / (2 * step)
    np.testing.assert_allclose(result.gradient, fd, atol=2e-7)
    hessian = provider.hessian(Z.numpy(), pos)
    assert hessian.shape == (9, 9) and np.allclose(hessian, hessian.T)


def test_the_no_energy_path_gives_the_hamiltonian_only():
    provider = ModelProvider(_model("none"), card={"name": "fock-only"})
    assert isinstance(provider.energy_path, NoEnergy)
    result = provider.compute(Z.numpy(), WATER.numpy(), want_gradient=True)
    assert np.isnan(result.energy) and result.gradient is None and result.fock.shape == (7, 7)
    for call in (provider.require_energy, lambda: provider.hessian(Z.numpy(), WATER.numpy())):
        with pytest.raises(PropertyNotImplementedError, match="Hamiltonian only"):
            call()
    with pytest.raises(PropertyNotImplementedError, match="no committee"):
        provider.uncertainty(Z.numpy(), WATER.numpy())
    # a card that says the energy was never trained turns any path into this one
    trained_not = ModelProvider(_model("readout"), card={"name": "f-only", "energy_trained": False})
    assert trained_not.energy_path is NO_ENERGY


# ----------------------------------------------------------------------------------------------------
# the provider protocol and the wrappers

def test_every_provider_has_every_capability_and_wrappers_forward_them():
    from ase_wavecalc.providers import PySCFProvider

    card = {"name": "m", "level_of_theory": {"method": "rks", "xc": "pbe", "basis": "sto-3g", "grid_level": 3}}
    model = ModelProvider(_model("readout"), card=card)
    wrappers = [ReferenceFallback(model), SCFRefinedProvider(model)]
    for provider in [model, PySCFProvider(method="hf", basis="sto-3g")] + wrappers:
        assert isinstance(provider, Provider), provider
    for wrapper in wrappers:     # none inherits the base class's "not available"
        for name in CAPABILITIES:
            member = getattr(type(wrapper), name, None)
            if callable(member):
                assert member is not getattr(HamiltonianProvider, name, None), (type(wrapper).__name__, name)
        assert wrapper.card is model.card
    with pytest.raises(Exception, match="lacks"):
        WaveCalculator(provider=object())


def test_reference_fallback_gives_the_models_hessian_and_forces_std_in_domain():
    """out_of_domain="reference" with a shipped model (committee, readout path): on an in-domain geometry
    the Hessian and forces_std are the model's own."""
    atoms = molecule("H2O")
    atoms.positions += np.random.default_rng(3).normal(scale=0.01, size=atoms.positions.shape)
    values = {}
    for policy in ("raise", "reference"):
        a = atoms.copy()
        a.calc = WaveCalculator(model="water-pbe-def2svp", out_of_domain=policy)
        values[policy] = (a.get_forces(), a.calc.get_property("forces_std", a), a.calc.get_property("energy_std", a),
                          a.calc.get_hessian(a))
    assert values["reference"][1].shape == (3, 3) and values["reference"][3].shape == (9, 9)
    for plain, fallback in zip(values["raise"], values["reference"]):
        np.testing.assert_array_equal(plain, fallback)
