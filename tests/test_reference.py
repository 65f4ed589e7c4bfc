"""run_reference against PySCF directly, against finite differences, and its failure modes."""
import pickle

import numpy as np
import pytest
import scipy.linalg
from ase.build import molecule

from ase_wavecalc.reference import ReferenceNotConverged, normalize_method, run_reference
from ase_wavecalc.units import BOHR

WATER = molecule("H2O")
WATER.positions += [[0.02, -0.03, 0.01], [0.0, 0.05, -0.04], [-0.03, 0.0, 0.02]]  # no symmetry


def _pyscf_direct(atoms, xc, basis):
    from pyscf import dft, gto, scf

    # PySCF converts Angstrom with its own Bohr (7e-10 relative from ASE's): give it Bohr from ASE's
    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions / BOHR)],
                unit="Bohr", basis=basis, symmetry=False, verbose=0)
    mf = scf.RHF(mol) if xc == "hf" else dft.RKS(mol, xc=xc)
    mf.conv_tol = 1e-12
    mf.kernel()
    return mf


@pytest.mark.parametrize("method", ["hf", "pbe"])
def test_matches_direct_pyscf(method):
    ref = run_reference(WATER.numbers, WATER.positions, method=method, basis="sto-3g")
    mf = _pyscf_direct(WATER, method, "sto-3g")
    assert abs(ref["e_tot"] - mf.e_tot) < 1e-9
    np.testing.assert_allclose(ref["fock"], mf.get_fock(), atol=1e-6)
    np.testing.assert_allclose(ref["overlap"], mf.get_ovlp(), atol=1e-14)
    np.testing.assert_allclose(ref["hcore"], mf.get_hcore(), atol=1e-12)
    np.testing.assert_allclose(ref["mo_energy"], mf.mo_energy, atol=1e-6)
    np.testing.assert_allclose(ref["gradient"], mf.nuc_grad_method().kernel(), atol=1e-6)
    np.testing.assert_allclose(ref["dipole"], mf.dip_moment(unit="AU", verbose=0), atol=1e-6)
    # the stored Fock matrix belongs to the stored orbital energies
    eps = scipy.linalg.eigh(ref["fock"], ref["overlap"], eigvals_only=True)
    np.testing.assert_allclose(eps, ref["mo_energy"], atol=1e-6)
    md = ref["metadata"]
    assert md["method"] == ("rhf" if method == "hf" else "rks") and md["basis"] == "sto-3g"
    assert md["conv_tol"] == 1e-11 and md["units"]["data"]["gradient"] == "Hartree/Bohr"


def test_gradient_is_derivative_of_energy():
    """One coordinate (O, y) by central differences of the energy, HF/STO-3G (exact, no grid)."""
    h = 1e-3  # Angstrom
    ref = run_reference(WATER.numbers, WATER.positions, method="hf", basis="sto-3g")
    energies = []
    for sign in (1, -1):
        pos = WATER.positions.copy()
        pos[0, 1] += sign * h
        energies.append(run_reference(WATER.numbers, pos, method="hf", basis="sto-3g",
                                      gradient=False)["e_tot"])
    fd = (energies[0] - energies[1]) / (2 * h / BOHR)  # Hartree/Bohr
    assert abs(fd - ref["gradient"][0, 1]) < 2e-7
    assert abs(ref["gradient"][0, 1]) > 1e-3  # a coordinate with a real force


def test_dipole_origin_is_zero_and_total():
    """Neutral molecule: translation leaves the dipole unchanged; it is nuclear + electronic."""
    a = run_reference(WATER.numbers, WATER.positions, method="hf", basis="sto-3g", gradient=False)
    b = run_reference(WATER.numbers, WATER.positions + 1.7, method="hf", basis="sto-3g", gradient=False)
    np.testing.assert_allclose(a["dipole"], b["dipole"], atol=1e-6)
    assert 0.3 < np.linalg.norm(a["dipole"]) < 1.5  # water, HF/STO-3G: ~0.68 e*Bohr


def test_not_converged_raises_and_pickles():
    with pytest.raises(ReferenceNotConverged) as info:
        run_reference(WATER.numbers, WATER.positions, method="pbe", basis="sto-3g", max_cycle=1)
    exc = pickle.loads(pickle.dumps(info.value))  # survives process pools / Dask
    assert isinstance(exc, ReferenceNotConverged) and exc.cycles == info.value.cycles
    assert "not converged" in str(exc)


@pytest.mark.parametrize("kwargs", [dict(spin=2), dict(charge=1)])
def test_open_shell_refused(kwargs):
    with pytest.raises(ValueError, match="closed-shell"):
        run_reference(WATER.numbers, WATER.positions, basis="sto-3g", **kwargs)


def test_method_names():
    assert normalize_method("HF") == ("rhf", "hf") and normalize_method("rhf") == ("rhf", "hf")
    assert normalize_method("B3LYP") == ("rks", "b3lyp")
    with pytest.raises(ValueError, match="unknown method"):
        normalize_method("not-a-functional")


def _water_scf(positions_bohr, xc="pbe", basis="sto-3g", level=1):
    from pyscf import dft

    from ase_wavecalc.integrals import make_mol

    mol = make_mol([8, 1, 1], positions_bohr, basis)
    mf = dft.RKS(mol)
    mf.xc, mf.grids.level, mf.conv_tol, mf.verbose = xc, level, 1e-12, 0
    mf.kernel()
    return mol, mf


def test_functional_energy_at_scf_density_is_scf_energy_and_variational_elsewhere():
    """E[P] at the SCF density is e_tot and dE/dP is the KS matrix; any other idempotent density with the
    same electron count is higher, by an amount quadratic in its distance from the SCF density."""
    from ase_wavecalc.reference import functional_energy

    pos = molecule("H2O").positions / BOHR
    mol, mf = _water_scf(pos)
    dm = mf.make_rdm1()
    out = functional_energy(mol, dm, "pbe", grid_level=1)
    assert abs(out["e_tot"] - mf.e_tot) < 1e-9
    np.testing.assert_allclose(out["fock"], mf.get_fock(dm=dm), atol=1e-10)

    c, n_occ = mf.mo_coeff, mol.nelectron // 2
    kappa = np.zeros((c.shape[1],) * 2)
    kappa[n_occ:, :n_occ] = np.random.default_rng(0).normal(size=(c.shape[1] - n_occ, n_occ))
    kappa -= kappa.T
    rises = []
    for angle in (0.01, 0.02):
        c_rot = c @ scipy.linalg.expm(angle * kappa)        # orthonormal in the S metric: idempotent P
        p_rot = 2 * c_rot[:, :n_occ] @ c_rot[:, :n_occ].T
        rises.append(functional_energy(mol, p_rot, "pbe", grid_level=1)["e_tot"] - mf.e_tot)
    assert rises[0] > 0 and rises[1] > 0
    assert 3.6 < rises[1] / rises[0] < 4.4                   # second order in the density error


def test_functional_energy_fixed_density_gradient_matches_finite_differences():
    """dE/dR at a fixed AO density matrix (basis functions, nuclei and grid move with the atoms)."""
    from ase_wavecalc.integrals import make_mol
    from ase_wavecalc.reference import functional_energy

    pos = molecule("H2O").positions / BOHR + np.array([[0.02, -0.03, 0.01], [0.0, 0.05, -0.02], [0, 0, 0]])
    mol, mf = _water_scf(pos)
    dm = mf.make_rdm1() + 1e-3 * np.eye(mol.nao)          # any density: the formula must not assume SCF
    grad = functional_energy(mol, dm, "pbe", grid_level=1, gradient=True,
                             grid_response=True)["gradient_fixed_density"]
    h = 1e-4
    for atom, axis in [(0, 2), (1, 0), (2, 1)]:
        energies = []
        for sign in (1, -1):
            p = pos.copy()
            p[atom, axis] += sign * h
            energies.append(functional_energy(make_mol([8, 1, 1], p, "sto-3g"), dm, "pbe", grid_level=1)["e_tot"])
        assert abs((energies[0] - energies[1]) / (2 * h) - grad[atom, axis]) < 2e-7


def test_functional_energy_gradient_refuses_an_indefinite_density():
    """PySCF's gradient rebuilds P from positively occupied orbitals: a negative eigenvalue would be lost."""
    from ase_wavecalc.reference import functional_energy

    mol, mf = _water_scf(molecule("H2O").positions / BOHR)
    dm = mf.make_rdm1() - 0.05 * np.eye(mol.nao)
    functional_energy(mol, dm, "pbe", grid_level=1)                    # the energy is defined for any P
    with pytest.raises(ValueError, match="negative eigenvalue"):
        functional_energy(mol, dm, "pbe", grid_level=1, gradient=True)
