"""integrals.py: numpy integrals against PySCF, torch ops against finite differences."""
import numpy as np
import pytest
import torch
from pyscf import gto, scf

from ase_wavecalc import integrals as ints

NUMBERS = (8, 1, 1)
POS = np.array([[0.0, 0.05, 0.2], [0.1, 1.45, -0.9], [-0.05, -1.4, -0.85]])  # Bohr, no symmetry


def _pos(requires_grad=True):
    return torch.tensor(POS, dtype=torch.float64, requires_grad=requires_grad)


def test_make_mol_keeps_frame():
    mol = ints.make_mol(NUMBERS, POS, "sto-3g")
    np.testing.assert_allclose(mol.atom_coords(), POS, atol=1e-14)
    assert not mol.cart and mol.nao == 7
    with pytest.raises(ValueError):
        ints.make_mol(NUMBERS, POS[:2], "sto-3g")


def test_make_mol_copies_are_independent_and_match_a_fresh_build():
    """make_mol reuses a parsed template: every call must still give a Mole exactly at its positions."""
    a = ints.make_mol(NUMBERS, POS, "def2-svp")
    a.charge = 2                                   # changing one copy must not leak into the next
    a.build(parse_arg=False, dump_input=False)
    moved = POS + 0.3
    b = ints.make_mol(NUMBERS, moved, "def2-svp")
    fresh = gto.M(atom=[(z, tuple(r)) for z, r in zip(NUMBERS, moved)], unit="Bohr", basis="def2-svp")
    assert b.charge == 0 and b.nelectron == 10
    np.testing.assert_allclose(b.atom_coords(), moved, atol=1e-14)
    np.testing.assert_allclose(ints.overlap(b), fresh.intor("int1e_ovlp"), atol=1e-14)
    np.testing.assert_allclose(ints.core_hamiltonian(b), scf.RHF(fresh).get_hcore(), atol=1e-12)


@pytest.mark.parametrize("numbers, basis", [(NUMBERS, "def2-svp"), ((53, 1), "def2-svp")])
def test_core_hamiltonian_derivative_matches_pyscf_generator(numbers, basis):
    """The one-call (int1e_grids_ip) derivative equals pyscf.grad's per-nucleus hcore_generator; the
    second case (iodine, with an ECP) takes PySCF's own path."""
    pos = POS[:len(numbers)] * (1.0 if numbers[0] == 8 else 1.6)
    mol = ints.make_mol(numbers, pos, basis)
    assert bool(mol.has_ecp()) == (numbers[0] == 53)
    deriv = scf.RHF(mol).nuc_grad_method().hcore_generator(mol)
    ref = np.stack([deriv(a) for a in range(mol.natm)])
    np.testing.assert_allclose(ints.core_hamiltonian_derivative(mol), ref, atol=1e-12)


def test_numpy_integrals_match_pyscf():
    mol = ints.make_mol(NUMBERS, POS, "def2-svp")
    ref = gto.M(atom=[(z, tuple(r)) for z, r in zip(NUMBERS, POS)], unit="Bohr", basis="def2-svp")
    np.testing.assert_allclose(ints.overlap(mol), ref.intor("int1e_ovlp"), atol=1e-14)
    np.testing.assert_allclose(ints.core_hamiltonian(mol), scf.RHF(ref).get_hcore(), atol=1e-12)
    np.testing.assert_allclose(ints.ao_dipole(mol), ref.intor("int1e_r"), atol=1e-12)
    ao_atom = ints.ao_atom_index(mol)
    assert ao_atom.shape == (mol.nao,) and list(np.bincount(ao_atom)) == [14, 5, 5]


def _fd_derivative(matrix_fn, basis, h=1e-5):
    out = np.zeros((len(NUMBERS), 3) + matrix_fn(ints.make_mol(NUMBERS, POS, basis)).shape)
    for a in range(len(NUMBERS)):
        for x in range(3):
            p = POS.copy()
            p[a, x] += h
            plus = matrix_fn(ints.make_mol(NUMBERS, p, basis))
            p[a, x] -= 2 * h
            minus = matrix_fn(ints.make_mol(NUMBERS, p, basis))
            out[a, x] = (plus - minus) / (2 * h)
    return out


@pytest.mark.parametrize("which", ["overlap", "core_hamiltonian"])
def test_analytic_derivatives_match_finite_differences(which):
    mol = ints.make_mol(NUMBERS, POS, "def2-svp")
    analytic = getattr(ints, which + "_derivative")(mol)
    fd = _fd_derivative(getattr(ints, which), "def2-svp")
    np.testing.assert_allclose(analytic, fd, atol=2e-8)
    # translational invariance
    np.testing.assert_allclose(analytic.sum(0), 0.0, atol=1e-10)


@pytest.mark.parametrize("fn", [ints.OverlapFunction, ints.CoreHamiltonianFunction])
def test_gradcheck_and_double_backward(fn):
    op = lambda p: fn.apply(p, NUMBERS, "sto-3g")  # noqa: E731
    assert torch.autograd.gradcheck(op, (_pos(),), eps=1e-5, atol=1e-6, fast_mode=True)
    # double backward: with respect to grad_output and to the positions (second-derivative integrals)
    assert torch.autograd.gradgradcheck(op, (_pos(),), eps=1e-5, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("fn", [ints.overlap_torch, ints.core_hamiltonian_torch])
def test_double_backward_force_training_pattern(fn):
    """loss(theta) = |dE/dR|^2 with E = sum(M(R) * G(theta)): d loss / d theta by autograd vs FD."""
    rng = torch.Generator().manual_seed(0)
    nao = fn(NUMBERS, _pos(False), "sto-3g").shape[0]
    g0 = torch.randn(nao, nao, generator=rng, dtype=torch.float64)
    g1 = torch.randn(nao, nao, generator=rng, dtype=torch.float64)

    def loss(theta, create_graph):
        pos = _pos()
        energy = torch.sum(fn(NUMBERS, pos, "sto-3g") * (g0 + theta * g1))
        grad, = torch.autograd.grad(energy, pos, create_graph=create_graph)
        return torch.sum(grad ** 2)

    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    d_theta, = torch.autograd.grad(loss(theta, True), theta)
    h = 1e-5
    fd = (loss(theta.detach() + h, False) - loss(theta.detach() - h, False)) / (2 * h)
    assert float(d_theta) == pytest.approx(float(fd), rel=1e-7)


def test_nuclear_repulsion():
    mol = ints.make_mol(NUMBERS, POS, "sto-3g")
    pos = _pos()
    e_nn = ints.nuclear_repulsion(NUMBERS, pos)
    assert e_nn.item() == pytest.approx(mol.energy_nuc(), rel=1e-14)
    grad, = torch.autograd.grad(e_nn, pos)
    np.testing.assert_allclose(grad.numpy(), scf.RHF(mol).nuc_grad_method().grad_nuc(), atol=1e-12)
    assert torch.autograd.gradgradcheck(lambda p: ints.nuclear_repulsion(NUMBERS, p), (_pos(),))
    assert float(ints.nuclear_repulsion([1], torch.zeros(1, 3, dtype=torch.float64))) == 0.0


def test_input_checks():
    with pytest.raises(TypeError, match="float64"):
        ints.overlap_torch(NUMBERS, _pos(False).float(), "sto-3g")
    with pytest.raises(ValueError, match="shape"):
        ints.overlap_torch(NUMBERS, _pos(False)[:2], "sto-3g")
