"""Energies and forces from a network Hamiltonian through WaveCalculator (float64, random small models).

The random network's F is added, scaled down, to the core Hamiltonian so that the "predicted" Hamiltonian
has a physical spectrum (an open HOMO-LUMO gap, degenerate levels for symmetric molecules) while every
part of the energy path (network, overlap, core Hamiltonian, density-matrix response) is exercised.
"""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from scipy.spatial.transform import Rotation

from ase_wavecalc import WaveCalculator, integrals
from ase_wavecalc.model.network import build_model, default_config
from ase_wavecalc.providers import ModelProvider

BASIS = "sto-3g"


class _PhysicalModel(torch.nn.Module):
    """F = h_core(R) + 0.05 F_net(R): a random network on top of a gapped Hamiltonian."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.config = net.config

    def forward(self, numbers, positions, batch):
        out = self.net(numbers, positions, batch)
        hcore = integrals.core_hamiltonian_torch(numbers, positions.double(), self.config["basis"])
        return {"fock": hcore.unsqueeze(0) + 0.05 * out["fock"],
                "delta_hcore": 0.05 * out["delta_hcore"],
                "atomic_energy_sum": out["atomic_energy_sum"], "learned_energy": out["learned_energy"]}


@pytest.fixture(scope="module")
def provider():
    torch.manual_seed(0)
    net = build_model(default_config(basis=BASIS, elements=[1, 6, 8], channels=4, num_layers=1,
                                     pair_channels=4, radial_hidden=8, pair_hidden=8, delta_hcore_head=True,
                                     atom_correction_hidden=8, energy_layers=1, energy_channels=4))
    with torch.no_grad():  # non-zero per-element offsets and atom correction, so they are part of the test
        for p in net.parameters():
            if p.dim() == 1 and p.numel() <= 10:
                p.uniform_(-0.1, 0.1)
        net.atom_correction_mlp[-1].weight.normal_(0.0, 1.0)
    model = _PhysicalModel(net).double()
    return ModelProvider(model, card={"name": "random-test-model"})


def _calc(provider):
    return WaveCalculator(provider=provider)


def _fd_forces(atoms, calc, step=5e-4):
    """Five-point central differences of the energy (eV/Angstrom)."""
    forces = np.zeros((len(atoms), 3))
    pos0 = atoms.get_positions()
    for a in range(len(atoms)):
        for x in range(3):
            e = []
            for k in (-2, -1, 1, 2):
                p = pos0.copy()
                p[a, x] += k * step
                trial = atoms.copy()
                trial.positions = p
                trial.calc = calc
                e.append(trial.get_potential_energy())
            forces[a, x] = -(e[0] - 8 * e[1] + 8 * e[2] - e[3]) / (12 * step)
    return forces


def _planar_water():
    return Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])


@pytest.mark.parametrize("make_atoms", [
    lambda: _perturbed(molecule("CH3CH2OH")),  # asymmetric
    lambda: molecule("CH4"),                    # Td: triply degenerate occupied level
    _planar_water,                              # planar, exactly
], ids=["ethanol", "methane", "planar-water"])
def test_forces_are_the_exact_negative_gradient(provider, make_atoms):
    atoms = make_atoms()
    calc = _calc(provider)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert np.isfinite(forces).all()
    fd = _fd_forces(atoms, calc)
    assert np.abs(forces - fd).max() < 1e-6  # eV/Angstrom
    assert np.abs(forces.sum(axis=0)).max() < 1e-8


def _perturbed(atoms, seed=0):
    atoms = atoms.copy()
    atoms.positions += np.random.default_rng(seed).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def test_energy_invariant_and_forces_equivariant(provider):
    atoms = _perturbed(molecule("CH3CH2OH"), seed=1)
    atoms.calc = _calc(provider)
    e0, f0, d0 = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_dipole_moment()
    rot = Rotation.random(random_state=5).as_matrix()
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + np.array([1.5, -2.0, 0.7])
    moved.calc = _calc(provider)
    e1, f1 = moved.get_potential_energy(), moved.get_forces()
    assert abs(e1 - e0) < 1e-8
    assert np.abs(f1 - f0 @ rot.T).max() < 1e-8
    # the dipole of a neutral molecule is origin independent and rotates as a vector
    assert np.abs(moved.get_dipole_moment() - d0 @ rot.T).max() < 1e-8


def test_float32_network_gives_close_energy(provider):
    atoms = molecule("H2O")
    atoms.calc = _calc(provider)
    e64 = atoms.get_potential_energy()
    p32 = ModelProvider(provider.model, dtype="float32", card={"name": "random-test-model"})
    atoms.calc = WaveCalculator(provider=p32)
    e32 = atoms.get_potential_energy()
    provider.model.double()
    assert abs(e32 - e64) < 1e-3  # eV: float32 network, float64 electronic structure


def test_atom_correction_is_invariant_and_part_of_the_energy(provider):
    """The learned per-atom correction depends on the geometry, is rotation invariant, and the energy
    includes it (so the finite-difference force tests above cover it)."""
    net = provider.model.net
    atoms = _perturbed(molecule("CH3CH2OH"))
    numbers = torch.as_tensor(atoms.numbers)
    pos = torch.tensor(atoms.positions / 0.52917721092)
    rot = torch.tensor(Rotation.random(random_state=1).as_matrix())
    with torch.no_grad():
        a = net(numbers, pos, None)["learned_energy"]
        b = net(numbers, pos @ rot.T, None)["learned_energy"]
        c = net(numbers, pos * 1.3, None)["learned_energy"]
    assert abs(float(a - b)) < 1e-12 and abs(float(a - c)) > 1e-8
    with torch.no_grad():
        saved = net.atom_correction_mlp[-1].weight.clone()
        e1 = provider.compute(atoms.numbers, pos.numpy()).energy
        net.atom_correction_mlp[-1].weight.zero_()
        e0 = provider.compute(atoms.numbers, pos.numpy()).energy
        net.atom_correction_mlp[-1].weight.copy_(saved)
    assert abs(e1 - e0) > 1e-6


def test_large_card_errors_warn_at_load(provider):
    """A model whose card reports large held-out energy/force errors says so when it is loaded."""
    with pytest.warns(UserWarning, match="force MAE 400 meV/A"):
        ModelProvider(provider.model, card={"name": "rough", "test_metrics": {"force_mae_mev_a": 400.0,
                                                                             "energy_mae_mev": 3.0}})
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ModelProvider(provider.model, card={"name": "good", "test_metrics": {"force_mae_mev_a": 20.0}})


def test_geometries_outside_the_training_domain_warn_then_fail(provider):
    """The card's shortest training distance per element pair guards against extrapolation: a bit below
    it warns (once), far below it is an InputError naming the atoms, never a silently wrong number."""
    from ase.calculators.calculator import InputError

    guarded = ModelProvider(provider.model, card={"name": "random-test-model",
                                                  "training_domain": {"min_pair_distance_A": {"1-8": 0.9}}})

    def water(r_oh):
        return Atoms("OH2", positions=[[0, 0, 0], [r_oh, 0, 0], [-0.24, 0.93, 0]])

    atoms = water(0.96)
    atoms.calc = WaveCalculator(provider=guarded)
    atoms.get_potential_energy()                       # inside: no warning (pytest turns warnings on)
    atoms = water(0.82)
    atoms.calc = WaveCalculator(provider=guarded)
    with pytest.warns(UserWarning, match=r"atoms 0 \(O\) and 1 \(H\) are 0.820 Angstrom apart"):
        atoms.get_potential_energy()
    atoms = water(0.6)
    atoms.calc = WaveCalculator(provider=guarded)
    with pytest.raises(InputError, match="far below the shortest H-O distance"):
        atoms.get_potential_energy()


def test_export_records_the_training_domain():
    """training_domain: the shortest distance of each element pair over the training frames."""
    from types import SimpleNamespace

    from ase_wavecalc.train.cli_export import training_domain

    pos = torch.tensor([[[0.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0]],
                        [[0.0, 0, 0], [0.0, 1.5, 0], [0, 0, 1.2]]]) / 0.52917721092
    eps = torch.tensor([[-1.0, -0.5, 0.3, 1.0], [-1.0, -0.4, 0.2, 1.0]])   # Hartree, n_occ = 2
    table = SimpleNamespace(numbers=torch.tensor([8, 1, 1]), positions_bohr=pos, n_occ=2, mo_energy=eps)
    domain = training_domain([table], [np.array([0, 1])])
    assert domain["min_homo_lumo_gap_eV"] == pytest.approx(0.6 * 27.211386, abs=2e-3)
    dom = domain["min_pair_distance_A"]
    assert dom["1-8"] == pytest.approx(1.0, abs=1e-4)
    assert dom["1-1"] == pytest.approx(min(np.hypot(1.0, 2.0), np.hypot(1.5, 1.2)), abs=1e-4)
    # O-H is bonded below 1.3 x (0.66 + 0.31) = 1.26 A: the 1.0 and 1.2 A pairs are, 1.5 and 2.0 A are not
    assert domain["compositions"] == ["H2O"]
    assert domain["bond_signatures"] == {"H2O": ["H[O] H[] O[H]"]}
    # the longest bond per element pair, over bonded pairs only (1.2 A; the 1.5 and 2.0 A pairs are not
    # bonds), rounded up to 1e-4 A; H-H is never bonded and has no entry
    assert list(domain["max_bond_length_A"]) == ["1-8"]
    assert 1.2 - 1e-9 <= domain["max_bond_length_A"]["1-8"] <= 1.2 + 1e-4
    assert training_domain([table], [np.array([0])])["max_bond_length_A"]["1-8"] == pytest.approx(1.0, abs=1e-4)
    # only the training rows count: a third frame with both O-H bonds, outside the rows, is not recorded
    pos3 = torch.cat([pos, torch.tensor([[[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]]) / 0.52917721092])
    eps3 = torch.cat([eps, eps[:1]])
    table3 = SimpleNamespace(numbers=torch.tensor([8, 1, 1]), positions_bohr=pos3, n_occ=2, mo_energy=eps3)
    assert training_domain([table3], [np.array([0, 1])])["bond_signatures"] == {"H2O": ["H[O] H[] O[H]"]}
    assert training_domain([table3], [np.array([1, 2])])["bond_signatures"] == {
        "H2O": ["H[O] H[] O[H]", "H[O]x2 O[H2]"]}


def test_a_collapsing_predicted_gap_is_an_error(provider):
    """A predicted HOMO-LUMO gap far below every training gap (a virtual level falling into the occupied
    manifold, where forces diverge) raises InputError instead of returning numbers."""
    from ase.calculators.calculator import InputError

    atoms = molecule("H2O")
    atoms.calc = WaveCalculator(provider=provider)
    atoms.get_potential_energy()
    homo, lumo = atoms.calc.get_homo_lumo()
    for smallest, fails in ((0.9 * (lumo - homo), False), (2.0 * (lumo - homo), True)):
        guarded = ModelProvider(provider.model, card={"name": "random-test-model",
                                                      "training_domain": {"min_homo_lumo_gap_eV": smallest}})
        atoms.calc = WaveCalculator(provider=guarded)
        if fails:
            with pytest.raises(InputError, match="HOMO-LUMO gap of"):
                atoms.get_potential_energy()
        else:
            atoms.get_potential_energy()


def test_md_command_stops_cleanly_when_the_model_refuses_a_geometry(tmp_path, capsys):
    """`wavecalc md` with a model whose training domain excludes the start: exit status 2, a message
    naming the reason, and an existing trajectory file left alone."""
    import json
    import shutil

    from ase_wavecalc.cli import main
    from ase_wavecalc.model.io import _resolve

    model = tmp_path / "water"
    shutil.copytree(_resolve("water-pbe-def2svp"), model)
    card = json.loads((model / "model.json").read_text())
    card["training_domain"] = {"min_homo_lumo_gap_eV": 100.0}   # no real gap is this wide
    card.pop("test_metrics", None)
    (model / "model.json").write_text(json.dumps(card))
    traj = tmp_path / "md.traj"
    traj.write_bytes(b"an earlier run")                 # refused at the start: nothing is overwritten
    assert main(["md", "H2O", "--model", str(model), "--steps", "2", "--trajectory", str(traj)]) == 2
    err = capsys.readouterr().err
    assert "cannot start" in err and "HOMO-LUMO gap" in err
    assert traj.read_bytes() == b"an earlier run"


def test_hessian_of_the_hamiltonian_path_matches_finite_differences_of_forces(provider):
    """calc.get_hessian() for a Hamiltonian-path model: double autograd through the network, the
    second-derivative integrals and eigh's density; equal to central differences of the analytic forces."""
    atoms = _perturbed(molecule("H2O"), seed=3)
    calc = _calc(provider)
    hess = calc.get_hessian(atoms)
    assert np.allclose(hess, hess.T, atol=1e-8)
    from _finite_differences import fd_hessian

    fd = fd_hessian(atoms, lambda: calc, step=1e-4)
    assert np.abs(hess - fd).max() < 1e-4 * np.abs(hess).max()
