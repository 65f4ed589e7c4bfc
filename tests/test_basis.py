"""Basis layout and AO rotations, checked against PySCF integrals and SCF at rotated geometries."""
import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.spatial.transform import Rotation

from ase_wavecalc.basis import BasisLayout, ao_rotation, element_shells, float64_default
from ase_wavecalc.integrals import make_mol
from ase_wavecalc.units import BOHR


def _bohr(atoms):
    return atoms.get_positions() / BOHR


def _random_rotation(seed):
    return Rotation.random(random_state=seed).as_matrix()


@pytest.mark.parametrize("basis,z,expected", [
    ("sto-3g", 8, [0, 0, 1]),
    ("6-31g", 6, [0, 0, 0, 1, 1]),
    ("def2-svp", 1, [0, 0, 1]),
    ("def2-svp", 8, [0, 0, 0, 1, 1, 2]),
    ("cc-pvdz", 8, [0, 0, 0, 1, 1, 2]),  # 2 of the s functions share one general-contraction shell
])
def test_shell_layout_matches_pyscf(basis, z, expected):
    shells = element_shells(basis, z)
    assert [s.l for s in shells] == expected
    mol = make_mol([z, z], [[0, 0, 0], [0, 0, 3.0]], basis, spin=(2 * z) % 2)
    layout = BasisLayout(basis, [z])
    assert layout.nao([z, z]) == mol.nao
    for (_, _, a0, a1), sl in zip(mol.aoslice_by_atom(), layout.ao_slices([z, z])):
        assert (a0, a1) == (sl.start, sl.stop)
    # the l of every AO agrees with PySCF's labels
    letters = "spdfgh"
    labels = mol.ao_labels(fmt=False)
    assert [letters.index(lab[2][-1]) for lab in labels] == layout.ao_l([z, z]).tolist()


def test_irreps_and_permutation():
    layout = BasisLayout("def2-svp", [1, 8])
    assert str(layout.irreps(8)) == "3x0e+2x1o+1x2e"
    assert str(layout.irreps(1)) == "2x0e+1x1o"
    perm = layout.e3nn_to_pyscf(8)
    assert sorted(perm.tolist()) == list(range(14))
    # first p shell starts at AO 3: e3nn (y, z, x) -> PySCF positions (4, 5, 3)
    assert perm[3:6].tolist() == [4, 5, 3]
    assert perm[9:14].tolist() == list(range(9, 14))  # d unchanged
    assert layout.max_l == 2


def test_unknown_element_and_basis_errors():
    layout = BasisLayout("def2-svp", [1, 8])
    with pytest.raises(ValueError, match="Z=6"):
        layout.n_ao(6)
    with pytest.raises(ValueError, match="sto-3g"):
        element_shells("sto-3g", 87)  # francium: no STO-3G functions


def test_e3nn_spherical_harmonics_match_pyscf_aos():
    """e3nn's Y^l at (y, z, x), permuted by e3nn_to_pyscf, is proportional to PySCF's AO angular part."""
    from e3nn import o3
    from pyscf.dft import numint

    mol = make_mol([8], [[0.0, 0.0, 0.0]], "def2-svp", spin=0)
    layout = BasisLayout("def2-svp", [8])
    rng = np.random.default_rng(0)
    points = rng.normal(size=(20, 3))
    points *= (1.0 / np.linalg.norm(points, axis=1))[:, None]  # unit sphere: radial part constant
    ao = numint.eval_ao(mol, points)  # (20, 14)
    with float64_default():
        y = torch.cat([o3.spherical_harmonics(s.l, torch.tensor(points[:, [1, 2, 0]]), normalize=True)
                       for s in layout.shells(8)], dim=1)
    perm = layout.e3nn_to_pyscf(8)
    y_pyscf = torch.empty_like(y)
    y_pyscf[:, perm] = y
    # per AO, the ratio to the PySCF value is a constant (the radial value times normalization)
    ratio = ao / y_pyscf.numpy()
    assert np.allclose(ratio, ratio[0:1], rtol=1e-9, atol=1e-12)


def _rotated(atoms, rot, inversion=False):
    pos = _bohr(atoms)
    center = pos.mean(axis=0)
    new = (pos - center) @ rot.T
    if inversion:
        new = -new
    return new + center


def _check_one_electron(name, basis, seed, inversion=False):
    atoms = molecule(name)
    numbers = atoms.numbers
    rot = _random_rotation(seed)
    mol0 = make_mol(numbers, _bohr(atoms), basis)
    mol1 = make_mol(numbers, _rotated(atoms, rot, inversion), basis)
    d = ao_rotation(BasisLayout(basis, set(numbers)), numbers, rot, inversion=inversion).numpy()
    assert np.allclose(d @ d.T, np.eye(len(d)), atol=1e-12)
    for key in ("int1e_ovlp", "int1e_kin", "int1e_nuc"):
        m0, m1 = mol0.intor(key), mol1.intor(key)
        assert np.abs(m1 - d @ m0 @ d.T).max() < 1e-9, key
    return mol0, mol1, d


@pytest.mark.parametrize("name,basis,inversion", [
    ("H2O", "def2-svp", False),
    ("CH3CH2OH", "def2-svp", False),
    ("CH3CH2OH", "def2-svp", True),
    ("H2O", "cc-pvdz", True),
    ("CH4", "6-31g", False),
    ("H2O", "ano-roos-dz", True),  # general contractions in p and d shells too
])
def test_one_electron_matrices_rotate(name, basis, inversion):
    _check_one_electron(name, basis, seed=7, inversion=inversion)


@pytest.mark.parametrize("name,basis,inversion", [
    ("H2O", "def2-svp", False),
    ("H2O", "cc-pvdz", True),
    ("CH3CH2OH", "def2-svp", False),
])
def test_converged_rhf_fock_rotates(name, basis, inversion):
    from pyscf import scf

    mol0, mol1, d = _check_one_electron(name, basis, seed=3, inversion=inversion)
    def converged_rhf(mol):
        """Tight RHF from PySCF's own guess. conv_tol 1e-13 is at the energy's round-off for ethanol, so
        PySCF's flag can stay False while the SCF is converged: check the orbital gradient instead."""
        mf = scf.RHF(mol)
        mf.conv_tol, mf.conv_tol_grad = 1e-13, 1e-10
        mf.kernel()
        grad = mf.get_grad(mf.mo_coeff, mf.mo_occ)
        assert abs(grad).max() < 1e-9, abs(grad).max()
        return mf

    mf0, mf1 = converged_rhf(mol0), converged_rhf(mol1)  # independent SCFs
    f0, f1 = mf0.get_fock(), mf1.get_fock()
    assert np.abs(f1 - d @ f0 @ d.T).max() < 1e-9
    assert abs(mf0.e_tot - mf1.e_tot) < 1e-10


def test_pbe_fock_rotates_with_fine_grid():
    """DFT grids are not rotation-invariant: a fine grid gets close, not exact."""
    from pyscf import dft

    mol0, mol1, d = _check_one_electron("H2O", "def2-svp", seed=11)
    focks = []
    for mol in (mol0, mol1):
        mf = dft.RKS(mol, xc="pbe")
        mf.grids.level = 5
        mf.conv_tol = 1e-12
        mf.kernel()
        focks.append(mf.get_fock())
    assert np.abs(focks[1] - d @ focks[0] @ d.T).max() < 1e-6


def test_rotation_input_checks():
    layout = BasisLayout("sto-3g", [1])
    with pytest.raises(ValueError, match="improper"):
        ao_rotation(layout, [1], -np.eye(3))
    with pytest.raises(ValueError, match="orthogonal"):
        ao_rotation(layout, [1], 2 * np.eye(3))
