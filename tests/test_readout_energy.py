"""The readout energy path (model config ``energy_path = "readout"``): E = sum_A e0[Z_A] + MLP(invariants of
the Fock trunk's atom features), through ModelProvider and WaveCalculator (float64, random small models).

Physics checked: forces are the exact negative gradient (finite differences, also for a molecule with
degenerate orbitals, where the energy does not need the spectrum at all), the energy is invariant and the
forces equivariant under rotations, translations, inversion and atom permutations; the fast energy-only
forward gives the full forward's energy; an MD step computes no Hamiltonian, and orbitals, dipole and
charges asked for afterwards are those of the Hamiltonian at that geometry.
"""
import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.spatial.transform import Rotation

from ase_wavecalc import WaveCalculator
from ase_wavecalc.model.network import build_model, default_config
from ase_wavecalc.providers import ModelProvider
from ase_wavecalc.units import BOHR

from _finite_differences import fd_hessian

BASIS = "sto-3g"


def _readout_model(seed=0, energy_layers=0):
    torch.manual_seed(seed)
    net = build_model(default_config(basis=BASIS, elements=[1, 6, 8], channels=4, num_layers=2,
                                     pair_channels=4, radial_hidden=8, pair_hidden=8, energy_path="readout",
                                     readout_hidden=8, energy_layers=energy_layers, energy_channels=4))
    with torch.no_grad():   # a non-zero energy function (the last layer starts at zero) and offsets
        net.readout_mlp[-1].weight.normal_(0.0, 1.0)
        net.element_energy_offsets.uniform_(-0.5, 0.5)
        # a physical-looking F: the mean blocks dominate, so the spectrum has an open gap
        for ro in net.pair_readout.values():
            ro.weight.mul_(0.01)
    return net.double()


@pytest.fixture(scope="module", params=[0, 1], ids=["fock-trunk", "fock-and-energy-trunk"])
def provider(request):
    """The readout of the Fock trunk alone, and beside an energy trunk of its own (energy_layers)."""
    return ModelProvider(_readout_model(energy_layers=request.param), card={"name": "random-readout-model"})


def _perturbed(atoms, seed=0, scale=0.05):
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(scale=scale, size=atoms.positions.shape)
    return atoms


def _fd_forces(atoms, calc, step=5e-4):
    """Five-point central differences of the energy (eV/Angstrom)."""
    forces = np.zeros((len(atoms), 3))
    for a in range(len(atoms)):
        for x in range(3):
            e = []
            for k in (-2, -1, 1, 2):
                trial = atoms.copy()
                trial.positions[a, x] += k * step
                trial.calc = calc
                e.append(trial.get_potential_energy())
            forces[a, x] = -(e[0] - 8 * e[1] + 8 * e[2] - e[3]) / (12 * step)
    return forces


@pytest.mark.parametrize("make_atoms", [lambda: _perturbed(molecule("CH3CH2OH")), lambda: molecule("CH4")],
                         ids=["ethanol", "methane-degenerate"])
def test_forces_are_the_exact_negative_gradient(provider, make_atoms):
    atoms = make_atoms()
    calc = WaveCalculator(provider=provider)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-5           # the test model has a non-trivial energy surface
    assert np.abs(forces - _fd_forces(atoms, calc)).max() < 1e-7
    assert np.abs(forces.sum(axis=0)).max() < 1e-8   # no net force (translation invariance)


def test_energy_invariant_forces_equivariant(provider):
    atoms = _perturbed(molecule("CH3CH2OH"), seed=1)
    atoms.calc = WaveCalculator(provider=provider)
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    rot = Rotation.random(random_state=3).as_matrix()
    cases = {"rotation+translation": (atoms.positions @ rot.T + [1.5, -2.0, 0.7], rot, None),
             "inversion": (-atoms.positions, -np.eye(3), None),
             "permutation": (None, np.eye(3), np.random.default_rng(2).permutation(len(atoms)))}
    for name, (pos, mat, perm) in cases.items():
        moved = atoms.copy() if perm is None else atoms[perm]
        if pos is not None:
            moved.positions = pos
        moved.calc = WaveCalculator(provider=ModelProvider(provider.model, card={"name": "copy"}))
        expect = f0 @ mat.T if perm is None else f0[perm]
        assert abs(moved.get_potential_energy() - e0) < 1e-9, name
        assert np.abs(moved.get_forces() - expect).max() < 1e-8, name


def test_energy_only_forward_equals_full_forward():
    net = _readout_model(seed=1)
    atoms = _perturbed(molecule("CH3CH2OH"), seed=4)
    z, pos = torch.as_tensor(atoms.numbers), torch.tensor(atoms.positions / BOHR)
    with torch.no_grad():
        full, fast = net(z, pos), net(z, pos, energy_only=True)
    assert "fock" in full and "fock" not in fast
    assert torch.allclose(full["energy"], fast["energy"], rtol=0, atol=1e-12)
    # the energy depends on the geometry (not just the offsets)
    with torch.no_grad():
        assert abs(float(net(z, pos * 1.1, energy_only=True)["energy"] - fast["energy"])) > 1e-6


def test_md_step_defers_the_hamiltonian_and_orbitals_follow_on_request(provider):
    atoms = _perturbed(molecule("CH3CH2OH"), seed=5)
    fresh = ModelProvider(provider.model, card={"name": "copy"})
    atoms.calc = WaveCalculator(provider=fresh)
    atoms.get_forces()
    assert fresh._cache[1].materialized is False          # energy and forces did not need F
    assert "dipole" not in atoms.calc.results
    dipole = atoms.get_dipole_moment()
    eps = atoms.calc.get_eigenvalues()
    # the same as a calculator asked for the dipole first (a Hamiltonian computed at once)
    ref = atoms.copy()
    ref.calc = WaveCalculator(provider=ModelProvider(provider.model, card={"name": "copy"}))
    assert np.allclose(ref.get_dipole_moment(), dipole, atol=1e-12)
    assert np.allclose(ref.calc.get_eigenvalues(), eps, atol=1e-10)
    assert np.isclose(ref.get_potential_energy(), atoms.get_potential_energy(), atol=1e-10)


def test_readout_config_is_checked():
    with pytest.raises(ValueError, match="energy_path"):
        build_model(default_config(basis=BASIS, elements=[1, 8], energy_path="density"))
    with pytest.raises(ValueError, match="delta_hcore_head = false"):
        build_model(default_config(basis=BASIS, elements=[1, 8], energy_path="readout",
                                   delta_hcore_head=True))


def test_readout_model_starts_from_a_two_head_models_fock_network():
    """init_weights from a Hamiltonian-path model with the core-correction head: the readout model's F is
    the Fock head of the source (train.stages.adapt_readout_heads): the weights are copied bit for bit, F
    agrees to rounding (the two networks' layers have other widths, so their sums run in another order)."""
    from ase_wavecalc.train.stages import adapt_readout_heads

    small = dict(basis=BASIS, elements=[1, 6, 8], channels=4, num_layers=2, pair_channels=4, radial_hidden=8,
                 pair_hidden=8)
    torch.manual_seed(0)
    source = build_model(default_config(**small, delta_hcore_head=True)).double()
    target = build_model(default_config(**small, energy_path="readout", readout_hidden=8)).double()
    state = adapt_readout_heads(source.state_dict(), target.state_dict())
    missing, unexpected = target.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("readout_mlp.") for k in missing)
    atoms = _perturbed(molecule("CH3CH2OH"), seed=6)
    z, pos = torch.as_tensor(atoms.numbers), torch.tensor(atoms.positions / BOHR)
    with torch.no_grad():
        torch.testing.assert_close(target(z, pos)["fock"], source(z, pos)["fock"], rtol=0, atol=1e-12)


def test_hessian_is_the_derivative_of_the_forces_and_gives_ase_frequencies(provider):
    """calc.get_hessian(): double autograd through the readout energy, equal to central differences of the
    analytic forces, symmetric, and the frequencies of ase.vibrations.VibrationsData.from_2d equal those of
    ase.vibrations.Vibrations (finite differences) on the same calculator."""
    from ase.vibrations import VibrationsData

    atoms = _perturbed(molecule("H2O"), seed=7)
    calc = WaveCalculator(provider=ModelProvider(provider.model, card={"name": "copy"}))
    atoms.calc = calc
    hess = calc.get_hessian(atoms)
    assert hess.shape == (9, 9) and np.allclose(hess, hess.T, atol=1e-10)
    fd = fd_hessian(atoms, lambda: calc, step=1e-4)
    assert np.abs(hess - fd).max() < 1e-5 * max(1.0, np.abs(hess).max())
    ours = VibrationsData.from_2d(atoms, hess).get_energies()
    fd_modes = VibrationsData.from_2d(atoms, 0.5 * (fd + fd.T)).get_energies()
    assert np.allclose(ours.real, fd_modes.real, atol=1e-5)


def test_pyscf_hessian_matches_finite_differences():
    atoms = molecule("H2O")
    calc = WaveCalculator(method="hf", basis="sto-3g", conv_tol=1e-12)
    atoms.calc = calc
    hess = calc.get_hessian(atoms)
    fd = fd_hessian(atoms, lambda: WaveCalculator(method="hf", basis="sto-3g", conv_tol=1e-12), step=1e-3)
    assert np.abs(hess - fd).max() < 2e-3 * np.abs(hess).max()


def test_a_float32_networks_training_energy_keeps_float64_digits():
    """A float32 network's total energy of ~-150 Hartree is rounded to ~1e-5 Hartree, the size of the errors the
    readout trains against: the loss's energy adds the learned part to the e0 sum in float64, so it equals the
    same weights' float64 energy to float32 precision of the learned part alone."""
    from types import SimpleNamespace

    from ase_wavecalc.train.losses import predicted_energy

    net = _readout_model(seed=3)
    with torch.no_grad():     # realistic offsets (Hartree): totals where float32 keeps 5 decimals only
        net.element_energy_offsets.copy_(torch.tensor([-0.5, -37.8, -75.1]))
    atoms = molecule("CH3CH2OH")
    rng = np.random.default_rng(0)
    frames = [atoms.positions + 0.05 * rng.standard_normal(atoms.positions.shape) for _ in range(6)]
    numbers = torch.tensor(np.tile(atoms.numbers, 6))
    batch = torch.arange(6).repeat_interleave(len(atoms))
    pos = torch.tensor(np.concatenate(frames) / BOHR)
    with torch.no_grad():
        exact = net(numbers, pos, batch, energy_only=True)["energy"]
        out32 = net.float()(numbers, pos.float(), batch, energy_only=True)
    trained = predicted_energy(out32, SimpleNamespace(), {})
    assert trained.dtype == torch.float64
    assert float(exact.abs().min()) > 150.0
    np.testing.assert_allclose(trained.numpy(), exact.numpy(), rtol=0, atol=2e-7)
