"""electronic.py against PySCF's own results for the same F and S, and its derivatives."""
import numpy as np
import pytest
import torch
from pyscf import scf
from pyscf.dft import numint
from pyscf.grad import rhf as rhf_grad

from ase_wavecalc import electronic as el
from ase_wavecalc.integrals import ao_atom_index, ao_dipole, make_mol

WATER_BOHR = np.array([[0.0, 0.0, 0.22], [0.0, 1.43, -0.89], [0.0, -1.43, -0.89]])
A = 1.18  # C-H distance / sqrt(3) in Bohr: regular tetrahedron
METHANE_BOHR = np.array([[0, 0, 0], [A, A, A], [-A, -A, A], [-A, A, -A], [A, -A, -A]], dtype=float)


def _scf(numbers, pos, basis):
    mol = make_mol(numbers, pos, basis)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-11
    mf.kernel()
    assert mf.converged
    fock = mf.get_fock()
    return mol, mf, torch.tensor(fock), torch.tensor(mf.get_ovlp())


@pytest.fixture(scope="module")
def water():
    return _scf([8, 1, 1], WATER_BOHR, "6-31g")


@pytest.fixture(scope="module")
def methane():
    return _scf([6, 1, 1, 1, 1], METHANE_BOHR, "sto-3g")


def test_against_pyscf(water):
    mol, mf, fock, ovlp = water
    n_occ = mol.nelectron // 2
    e_ref, c_ref = mf.eig(fock.numpy(), ovlp.numpy())
    occ_ref = mf.get_occ(e_ref, c_ref)

    mo_energy, mo_coeff = el.solve_fock(fock, ovlp)
    np.testing.assert_allclose(mo_energy.numpy(), e_ref, atol=1e-10)
    assert torch.all(mo_energy[1:] >= mo_energy[:-1])
    np.testing.assert_allclose((mo_coeff.T @ ovlp @ mo_coeff).numpy(), np.eye(mol.nao), atol=1e-12)

    mo_occ = el.occupations(mol.nao, n_occ)
    np.testing.assert_array_equal(mo_occ.numpy(), occ_ref)
    dm = el.closed_shell_density(fock, ovlp, n_occ)
    dm_ref = mf.make_rdm1(c_ref, occ_ref)
    np.testing.assert_allclose(dm.numpy(), dm_ref, atol=1e-10)
    np.testing.assert_allclose(el.density_matrix(mo_coeff, mo_occ).numpy(), dm_ref, atol=1e-10)

    w = el.energy_weighted_density(mo_energy, mo_coeff, mo_occ)
    np.testing.assert_allclose(w.numpy(), rhf_grad.make_rdm1e(e_ref, c_ref, occ_ref), atol=1e-10)
    assert abs(float(el.band_energy(mo_energy, mo_occ)) - float((e_ref * occ_ref).sum())) < 1e-10
    assert abs(float(el.band_energy(mo_energy, mo_occ)) - float(torch.sum(dm * fock))) < 1e-10

    homo, lumo = el.homo_lumo(mo_energy, n_occ)
    assert float(homo) == pytest.approx(e_ref[n_occ - 1], abs=1e-10)
    assert float(lumo) == pytest.approx(e_ref[n_occ], abs=1e-10)

    _, chg_ref = mf.mulliken_pop(mol, dm_ref, ovlp.numpy(), verbose=0)
    chg = el.mulliken_charges(dm, ovlp, ao_atom_index(mol), mol.atom_charges())
    np.testing.assert_allclose(chg.numpy(), chg_ref, atol=1e-10)
    assert abs(float(chg.sum())) < 1e-10

    dip_ref = mf.dip_moment(mol, dm_ref, unit="au", verbose=0)
    dip = el.dipole_moment(dm, ao_dipole(mol), mol.atom_charges(), mol.atom_coords())
    np.testing.assert_allclose(dip.numpy(), dip_ref, atol=1e-9)

    points = np.random.default_rng(0).normal(scale=2.0, size=(50, 3))
    rho_ref = numint.eval_rho(mol, numint.eval_ao(mol, points), dm_ref)
    np.testing.assert_allclose(el.density_on_points(mol, dm, points).numpy(), rho_ref, atol=1e-10)


def test_batch_matches_single(water):
    mol, _, fock, ovlp = water
    rng = torch.Generator().manual_seed(1)
    pert = torch.randn(fock.shape, generator=rng, dtype=torch.float64) * 1e-2
    focks = torch.stack([fock, fock + pert + pert.T])
    ovlps = torch.stack([ovlp, ovlp])
    dms = el.closed_shell_density(focks, ovlps, mol.nelectron // 2)
    for b in range(2):
        single = el.closed_shell_density(focks[b], ovlps[b], mol.nelectron // 2)
        torch.testing.assert_close(dms[b], single, atol=1e-12, rtol=0)
    e, c = el.solve_fock(focks, ovlps)
    assert e.shape == (2, mol.nao) and c.shape == (2, mol.nao, mol.nao)


def _directional_fd(fun, x, direction, h=1e-5):
    return (fun(x + h * direction) - fun(x - h * direction)) / (2 * h)


@pytest.mark.parametrize("system", ["water", "methane"])
def test_density_gradient_finite_differences(system, request):
    mol, mf, fock, ovlp = request.getfixturevalue(system)
    n_occ = mol.nelectron // 2
    if system == "methane":  # the three highest occupied levels (t2) are degenerate
        e = mf.mo_energy
        assert abs(e[n_occ - 1] - e[n_occ - 3]) < 1e-8
    rng = np.random.default_rng(3)
    h = torch.tensor(rng.normal(size=fock.shape))
    h = h + h.T
    d_f = torch.tensor(rng.normal(size=fock.shape)) * 0.1
    d_f = d_f + d_f.T
    d_s = torch.tensor(rng.normal(size=fock.shape)) * 0.01
    d_s = d_s + d_s.T

    fock_v = fock.clone().requires_grad_(True)
    ovlp_v = ovlp.clone().requires_grad_(True)
    loss = torch.sum(el.closed_shell_density(fock_v, ovlp_v, n_occ) * h)
    g_f, g_s = torch.autograd.grad(loss, (fock_v, ovlp_v))
    assert torch.isfinite(g_f).all() and torch.isfinite(g_s).all()
    torch.testing.assert_close(g_f, g_f.T)

    fd_f = _directional_fd(lambda f: torch.sum(el.closed_shell_density(f, ovlp, n_occ) * h), fock, d_f)
    fd_s = _directional_fd(lambda s: torch.sum(el.closed_shell_density(fock, s, n_occ) * h), ovlp, d_s)
    assert float(torch.sum(g_f * d_f)) == pytest.approx(float(fd_f), rel=1e-6, abs=1e-8)
    assert float(torch.sum(g_s * d_s)) == pytest.approx(float(fd_s), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("system", ["water", "methane"])
def test_band_energy_gradient_is_p_and_minus_w(system, request):
    mol, _, fock, ovlp = request.getfixturevalue(system)
    n_occ = mol.nelectron // 2
    fock_v = fock.clone().requires_grad_(True)
    ovlp_v = ovlp.clone().requires_grad_(True)
    dm = el.closed_shell_density(fock_v, ovlp_v, n_occ)
    e_band = torch.sum(dm * fock_v)  # = 2 sum_occ eps_i
    g_f, g_s = torch.autograd.grad(e_band, (fock_v, ovlp_v))
    mo_energy, mo_coeff = el.solve_fock(fock, ovlp)
    mo_occ = el.occupations(mol.nao, n_occ)
    torch.testing.assert_close(g_f, el.density_matrix(mo_coeff, mo_occ), atol=1e-10, rtol=0)
    torch.testing.assert_close(g_s, -el.energy_weighted_density(mo_energy, mo_coeff, mo_occ),
                               atol=1e-10, rtol=0)


def test_constructed_degenerate_levels():
    """F with a doubly degenerate HOMO and a doubly degenerate LUMO (generalized problem, S != 1)."""
    rng = np.random.default_rng(11)
    n, n_occ = 7, 3
    b = rng.normal(size=(n, n)) * 0.2
    ovlp = torch.tensor(np.eye(n) + b @ b.T)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    x = torch.linalg.solve_triangular(torch.linalg.cholesky(ovlp).T, torch.tensor(q), upper=True)
    levels = torch.tensor([-2.0, -0.7, -0.7, 0.4, 0.4, 1.0, 1.5], dtype=torch.float64)
    sx = ovlp @ x
    fock = sx @ torch.diag(levels) @ sx.T
    fock = 0.5 * (fock + fock.T)
    mo_energy, _ = el.solve_fock(fock, ovlp)
    torch.testing.assert_close(mo_energy, levels, atol=1e-12, rtol=0)

    h = torch.tensor(rng.normal(size=(n, n)))
    h = h + h.T
    d_f = torch.tensor(rng.normal(size=(n, n)))
    d_f = d_f + d_f.T
    fock_v = fock.clone().requires_grad_(True)
    g, = torch.autograd.grad(torch.sum(el.closed_shell_density(fock_v, ovlp, n_occ) * h), fock_v)
    assert torch.isfinite(g).all()
    fd = _directional_fd(lambda f: torch.sum(el.closed_shell_density(f, ovlp, n_occ) * h), fock, d_f)
    assert float(torch.sum(g * d_f)) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_double_backward():
    rng = torch.Generator().manual_seed(5)
    n, n_occ = 6, 2
    a = torch.randn(n, n, generator=rng, dtype=torch.float64)
    fock = (a + a.T).requires_grad_(True)
    b = torch.randn(n, n, generator=rng, dtype=torch.float64) * 0.1
    ovlp = (torch.eye(n, dtype=torch.float64) + b @ b.T).requires_grad_(True)
    fun = lambda f, s: el.closed_shell_density(_sym(f), _sym(s), n_occ)  # noqa: E731
    assert torch.autograd.gradcheck(fun, (fock, ovlp))
    assert torch.autograd.gradgradcheck(fun, (fock, ovlp))


def _sym(x):
    return 0.5 * (x + x.T)


def test_closed_gap_raises():
    fock = torch.diag(torch.tensor([-1.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    ovlp = torch.eye(4, dtype=torch.float64)
    with pytest.raises(el.ClosedGapError, match="HOMO-LUMO gap"):
        el.closed_shell_density(fock, ovlp, 2)
    with pytest.raises(ValueError, match="n_occ"):
        el.closed_shell_density(fock, ovlp, 5)
    assert torch.isfinite(el.closed_shell_density(fock, ovlp, 1)).all()


def test_cube_and_grid(water, tmp_path):
    mol, mf, _, _ = water
    dm = mf.make_rdm1()
    rho, origin, axes = el.density_on_grid(mol, dm, nx=40, ny=40, nz=40, margin=4.0)
    n_elec = rho.sum() * abs(np.linalg.det(axes))
    assert n_elec == pytest.approx(mol.nelectron, rel=0.05)
    path = tmp_path / "rho.cube"
    el.write_cube(path, mol, torch.tensor(dm), nx=20, ny=20, nz=20)
    lines = path.read_text().splitlines()
    assert int(lines[2].split()[0]) == mol.natm and int(lines[3].split()[0]) == 20
