"""The energy functional E = E_nn + 1/2 Tr[P (F + h)] + e0 and its gradient."""
import numpy as np
import pytest
import torch
from ase.build import molecule

from ase_wavecalc import energy, integrals
from ase_wavecalc.units import BOHR


def _positions(name, jitter=0.0, seed=0):
    atoms = molecule(name)
    pos = atoms.get_positions() / BOHR
    if jitter:
        pos = pos + np.random.default_rng(seed).normal(scale=jitter, size=pos.shape)
    return atoms.numbers, torch.tensor(pos, dtype=torch.float64)


def test_hf_energy_is_exact():
    """With the converged RHF Fock matrix and h = h_core, the functional is PySCF's RHF energy."""
    from pyscf import scf

    numbers, pos = _positions("H2O")
    mol = integrals.make_mol(numbers, pos.numpy(), "def2-svp")
    mf = scf.RHF(mol)
    mf.conv_tol, mf.conv_tol_grad = 1e-14, 1e-10
    mf.kernel()
    fock = torch.tensor(mf.get_fock())
    e_tot, parts = energy.total_energy(numbers, pos, fock, "def2-svp")
    assert abs(e_tot.item() - mf.e_tot) < 1e-9
    assert abs(parts["e_nuc"].item() - mol.energy_nuc()) < 1e-10
    assert torch.allclose(parts["dm"], torch.tensor(mf.make_rdm1()), atol=1e-7)


def _model_fock(numbers, pos, basis):
    """A stand-in for the network: a smooth symmetric F(R) built from one-electron integrals."""
    h = integrals.core_hamiltonian_torch(numbers, pos, basis)
    s = integrals.overlap_torch(numbers, pos, basis)
    return h + 0.3 * s @ h @ s - 0.2 * s


def _energy(numbers, pos, basis, density):
    fock = _model_fock(numbers, pos, basis)
    delta_h = 0.05 * integrals.overlap_torch(numbers, pos, basis) ** 2
    e, _ = energy.total_energy(numbers, pos, fock, basis, delta_hcore=delta_h, atomic_energy_sum=-0.5,
                               density=density)
    return e


@pytest.mark.parametrize("name,jitter", [("CH3CH2OH", 0.05), ("CH4", 0.0), ("H2O", 0.0)])
def test_gradient_matches_finite_differences(name, jitter):
    """Forces from autograd equal central finite differences, also for symmetric (degenerate) molecules."""
    basis = "sto-3g"
    numbers, pos = _positions(name, jitter)
    pos = pos.clone().requires_grad_(True)
    e = _energy(numbers, pos, basis, "projector")
    (grad,) = torch.autograd.grad(e, pos)
    assert torch.isfinite(grad).all()
    step = 2e-3  # five-point stencil: truncation error O(step^4)
    fd = torch.zeros_like(grad)
    with torch.no_grad():
        for a in range(len(numbers)):
            for x in range(3):
                dp = torch.zeros_like(pos)
                dp[a, x] = step
                e = [_energy(numbers, pos + k * dp, basis, "projector") for k in (-2, -1, 1, 2)]
                fd[a, x] = (e[0] - 8 * e[1] + 8 * e[2] - e[3]) / (12 * step)
    # 1e-6 eV/A is 2e-8 Hartree/Bohr
    assert (grad - fd).abs().max().item() < 2e-8
    # translation invariance: the total force vanishes
    assert grad.sum(0).abs().max().item() < 1e-9


def test_eigh_and_projector_back_ends_agree():
    basis = "sto-3g"
    numbers, pos = _positions("CH3CH2OH", 0.05, seed=1)
    grads = []
    for density in ("projector", "eigh"):
        p = pos.clone().requires_grad_(True)
        e = _energy(numbers, p, basis, density)
        grads.append((e.detach(), torch.autograd.grad(e, p)[0]))
    assert abs(grads[0][0] - grads[1][0]) < 1e-12
    assert (grads[0][1] - grads[1][1]).abs().max() < 1e-9


def test_first_order_matrices_match_exact_ops():
    """The linearized S and h (default) give the same value and gradient as the exact autograd ops."""
    numbers, pos = _positions("H2O", 0.05, seed=2)
    grads = []
    for order in (1, 2):
        p = pos.clone().requires_grad_(True)
        s, h = energy.one_electron_matrices(numbers, p, "def2-svp", derivative_order=order)
        w = torch.linspace(-1, 1, s.numel(), dtype=torch.float64).reshape(s.shape)
        loss = (w * s).sum() + (w.T * h).sum()
        grads.append((s.detach(), h.detach(), torch.autograd.grad(loss, p)[0]))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-12


def test_odd_electron_count_rejected():
    with pytest.raises(ValueError, match="closed-shell"):
        energy.n_occupied([8, 1])
