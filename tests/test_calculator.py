"""WaveCalculator through ASE: forces, PySCF agreement, optimization, vibrations, caching, bad input."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import CalculationFailed, InputError, PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces
from ase.optimize import BFGS
from ase.vibrations import Vibrations

from ase_wavecalc import WaveCalculator, providers
from ase_wavecalc.units import BOHR, HARTREE
from ase_wavecalc.validation import check_atoms



def _water(rattle=0.0):
    atoms = molecule("H2O")
    if rattle:
        atoms.rattle(rattle, seed=3)
    return atoms


# -- forces ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,basis,grid_response,system", [
    ("hf", "sto-3g", False, "H2O"),
    ("hf", "sto-3g", False, "CH3OH"),
    ("pbe", "sto-3g", True, "H2O"),
])
def test_forces_equal_finite_differences(method, basis, grid_response, system):
    atoms = molecule(system)
    atoms.rattle(0.05, seed=1)
    atoms.calc = WaveCalculator(method=method, basis=basis, grid_response=grid_response)
    forces = atoms.get_forces()
    iatoms = None if method == "hf" else [1]   # DFT energies are slower: one atom is enough
    numerical = calculate_numerical_forces(atoms, eps=1e-3, iatoms=iatoms)
    rows = slice(None) if iatoms is None else iatoms
    np.testing.assert_allclose(forces[rows], numerical, atol=2e-4)
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-6)


# -- PBE/def2-SVP water: PySCF agreement, optimization, vibrations ----------------------------------
def _pyscf_rks(atoms):
    from pyscf import dft

    from ase_wavecalc.integrals import make_mol

    mol = make_mol(atoms.numbers, atoms.positions / BOHR, "def2-svp")
    mf = dft.RKS(mol)
    mf.xc = "pbe"
    mf.grids.level = 3
    mf.conv_tol = 1e-10
    mf.kernel()
    assert mf.converged
    return mf


def test_water_pbe_matches_pyscf():
    atoms = _water(rattle=0.02)
    atoms.calc = WaveCalculator(method="pbe", basis="def2-svp")
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    mf = _pyscf_rks(atoms)
    assert energy == pytest.approx(mf.e_tot * HARTREE, abs=1e-6)
    np.testing.assert_allclose(forces, -mf.nuc_grad_method().kernel() * HARTREE / BOHR, atol=1e-5)
    np.testing.assert_allclose(atoms.calc.get_eigenvalues(), mf.mo_energy * HARTREE, atol=1e-4)
    dip = mf.dip_moment(unit="au", verbose=0) * BOHR
    np.testing.assert_allclose(atoms.get_dipole_moment(), dip, atol=1e-6)
    _, chg = mf.mulliken_pop(verbose=0)
    np.testing.assert_allclose(atoms.get_charges(), chg, atol=1e-6)

    calc = atoms.calc
    n_occ = 5
    occ = calc.get_occupation_numbers()
    assert occ.sum() == 10 and np.all(occ[:n_occ] == 2) and np.all(occ[n_occ:] == 0)
    homo, lumo = calc.get_homo_lumo()
    eps = calc.get_eigenvalues()
    assert (homo, lumo) == (eps[n_occ - 1], eps[n_occ])
    assert calc.get_fermi_level() == pytest.approx(0.5 * (homo + lumo))
    assert calc.get_number_of_bands() == 24 and calc.get_number_of_spins() == 1
    f, s, p, c = (calc.get_hamiltonian(), calc.get_overlap(), calc.get_density_matrix(),
                  calc.get_mo_coefficients())
    assert f.shape == s.shape == p.shape == (24, 24)
    np.testing.assert_allclose(f @ c, s @ c * (eps / HARTREE), atol=1e-8)
    assert np.trace(p @ s) == pytest.approx(10.0, abs=1e-8)
    with pytest.raises(IndexError):
        calc.get_eigenvalues(spin=1)


@pytest.fixture(scope="module")
def water_optimized():
    atoms = _water()
    atoms.calc = WaveCalculator(method="pbe", basis="def2-svp")
    opt = BFGS(atoms, logfile=None)
    assert opt.run(fmax=0.01, steps=50)
    return atoms


def test_bfgs_water(water_optimized):
    atoms = water_optimized
    assert np.abs(atoms.get_forces()).max() < 0.01
    d1, d2 = atoms.get_distance(0, 1), atoms.get_distance(0, 2)
    angle = atoms.get_angle(1, 0, 2)
    assert 0.96 < d1 < 0.99 and d1 == pytest.approx(d2, abs=1e-3)
    assert angle == pytest.approx(104.0, abs=3.0)


def test_vibrations_water(water_optimized, tmp_path):
    from pyscf.hessian import thermo

    atoms = water_optimized.copy()
    atoms.calc = WaveCalculator(method="pbe", basis="def2-svp")
    vib = Vibrations(atoms, name=str(tmp_path / "vib"), delta=0.005, nfree=2)
    vib.run()
    freqs = vib.get_frequencies()       # cm^-1, complex for imaginary modes
    real = np.sort(freqs.real[np.abs(freqs.imag) < 1e-8])
    modes = real[-3:]
    assert np.all(np.abs(freqs[:6]) < 100)   # translations and rotations (grid noise only)

    mf = _pyscf_rks(atoms)
    hessian = mf.Hessian().kernel()
    ref = thermo.harmonic_analysis(mf.mol, hessian)["freq_wavenumber"]
    ref = np.sort(np.real(ref))[-3:]
    np.testing.assert_allclose(modes, ref, rtol=0.02)
    assert 1500 < modes[0] < 1700 and 3600 < modes[1] < modes[2] < 3900


# -- caching ----------------------------------------------------------------------------------------
def test_results_are_cached():
    atoms = _water()
    calc = WaveCalculator(method="hf", basis="sto-3g")
    atoms.calc = calc
    calls = []
    original = calc.calculate

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    calc.calculate = counting
    e1 = atoms.get_potential_energy()
    e2 = atoms.get_potential_energy()
    assert e1 == e2 and len(calls) == 1 and calc.provider.n_calls == 1
    atoms.get_dipole_moment(), atoms.get_charges(), calc.get_eigenvalues()
    assert len(calls) == 1
    atoms.get_forces()                      # gradient of the cached SCF: no new SCF
    assert calc.provider.n_calls == 1
    atoms.get_forces()
    assert len(calls) == 2
    atoms.positions[0, 2] += 0.01           # positions changed: recompute from the previous density
    e3 = atoms.get_potential_energy()
    assert e3 != e1 and calc.provider.n_calls == 2
    assert calc._result.info["initial_guess"] == "previous density"
    calc.set(basis="3-21g")                 # parameters changed: results dropped, new provider
    assert calc.results == {}
    assert atoms.get_potential_energy() < e3 - 1.0


def test_density_and_cube(tmp_path):
    atoms = _water()
    atoms.calc = WaveCalculator(method="hf", basis="sto-3g")
    with pytest.raises(InputError, match="no calculation yet"):
        atoms.calc.get_eigenvalues()
    atoms.get_potential_energy()
    rho, origin, axes = atoms.calc.get_density_on_grid(nx=40, ny=40, nz=40, margin=3.0)
    assert rho.sum() * abs(np.linalg.det(axes)) == pytest.approx(10.0, rel=0.1)  # coarse grid, O 1s cusp
    ijk = np.array([[20, 17, 23], [5, 30, 12]])
    points = origin + ijk @ axes
    np.testing.assert_allclose(atoms.calc.get_electron_density(points), rho[tuple(ijk.T)], rtol=1e-10)
    with pytest.raises(InputError, match=r"these atoms have no cell.*atoms.center\(vacuum=4.0\).*calc.write_cube"):
        atoms.calc.get_pseudo_density(nx=10, ny=10, nz=10)        # ASE's cube writer would need a cell
    at_o = atoms.calc.get_electron_density(atoms.positions[:1])
    assert at_o[0] > 100  # e/A^3 at the oxygen nucleus
    atoms.calc.write_cube(tmp_path / "water.cube", nx=10, ny=10, nz=10)
    assert (tmp_path / "water.cube").read_text().splitlines()[2].split()[0] == "3"


def test_pseudo_density_in_a_cube_written_by_ase(tmp_path):
    """#23: ASE's recipe ``ase.io.write("d.cube", atoms, data=calc.get_pseudo_density())`` wrote zero voxel
    vectors for a molecule without a cell. With a cell the density is on the cell's grid, so the cube read
    back has the cell's voxels, the atoms, and at each voxel the density at that point (the maximum on the
    oxygen)."""
    from ase.io import write
    from ase.io.cube import read_cube

    atoms = _water()
    atoms.center(vacuum=3.0)
    atoms.calc = WaveCalculator(method="hf", basis="sto-3g")
    atoms.get_potential_energy()
    rho = atoms.calc.get_pseudo_density(nx=48, ny=52, nz=44)
    assert rho.shape == (48, 52, 44)
    write(tmp_path / "d.cube", atoms, data=rho)
    with open(tmp_path / "d.cube") as f:
        cube = read_cube(f)
    np.testing.assert_allclose(cube["spacing"], np.asarray(atoms.cell) / np.array([[48], [52], [44]]), atol=1e-5)
    assert np.all(np.abs(np.diag(cube["spacing"])) > 0.1)
    np.testing.assert_allclose(cube["origin"], 0.0, atol=1e-6)
    np.testing.assert_allclose(cube["atoms"].positions, atoms.positions, atol=1e-5)
    data = cube["data"]
    np.testing.assert_allclose(data, rho, rtol=1e-5, atol=1e-12)
    ijk = np.array([[24, 26, 22], [10, 30, 15], [40, 5, 33]])
    points = cube["origin"] + ijk @ cube["spacing"]
    np.testing.assert_allclose(atoms.calc.get_electron_density(points), data[tuple(ijk.T)], rtol=1e-4, atol=1e-9)
    peak = np.array(np.unravel_index(np.argmax(data), data.shape)) @ cube["spacing"]
    assert np.linalg.norm(peak - atoms.positions[0]) < np.linalg.norm(np.diag(cube["spacing"]))   # on O

def test_model_hook(monkeypatch):
    class FakeModelProvider(providers.PySCFProvider):
        """Stands in for the trained network: same interface."""

        def __init__(self, name, charge=0, dtype="float64", fast=None, compile=False, device=None):
            if name == "buggy-model":
                raise TypeError("bug in the loader")
            if name != "fake-model":
                raise FileNotFoundError(f"no model {name!r}")
            super().__init__(method="hf", basis="sto-3g", charge=charge or 0)   # None: the default charge
            self.name, self.elements = name, frozenset({1, 8})

    monkeypatch.setattr(providers, "ModelProvider", FakeModelProvider)
    with pytest.raises(InputError, match="could not load model 'unknown'"):
        WaveCalculator(model="unknown").get_potential_energy(_water())
    with pytest.raises(TypeError, match="bug in the loader"):   # a bug, not bad input: not an InputError
        WaveCalculator(model="buggy-model").get_potential_energy(_water())
    calc = WaveCalculator(model="fake-model")
    assert calc.get_potential_energy(_water()) < 0
    assert calc.provider.name == "fake-model"
    with pytest.raises(InputError, match="element C \\(Z=6\\) is not supported"):
        calc.get_potential_energy(molecule("CH4"))


def test_hamiltonian_only_provider():
    """A provider without energies (NaN, no gradient) still gives orbitals, dipole and charges."""

    class HamiltonianOnly(providers.PySCFProvider):
        def compute(self, numbers, positions_bohr, want_gradient=False):
            res = super().compute(numbers, positions_bohr, False)
            return providers.HamiltonianResult.from_fock(res.mol, res.fock, res.overlap, float("nan"))

    atoms = _water()
    atoms.calc = WaveCalculator(provider=HamiltonianOnly("hf", "sto-3g"))
    assert atoms.get_dipole_moment().shape == (3,)
    assert len(atoms.calc.get_eigenvalues()) == 7
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_potential_energy()


# -- bad input --------------------------------------------------------------------------------------
def _bad(atoms, match, **params):
    calc = WaveCalculator(method="hf", basis="sto-3g", **params)
    with pytest.raises(InputError, match=match):
        calc.get_potential_energy(atoms)


def test_bad_input_periodic():
    atoms = _water()
    atoms.cell = [5, 5, 5]
    atoms.pbc = True
    _bad(atoms, "periodic")


def test_bad_input_element_not_in_basis():
    _bad(Atoms("Xe2", positions=[[0, 0, 0], [0, 0, 3]]), "basis 'sto-3g' has no functions for element Xe")


def test_bad_input_nan_positions():
    atoms = _water()
    atoms.positions[1, 0] = np.nan
    _bad(atoms, "atom 1 \\(H\\) is not finite")


def test_bad_input_overlapping_atoms():
    atoms = _water()
    atoms.positions[2] = atoms.positions[0] + [0.0, 0.0, 0.05]
    _bad(atoms, "atoms 0 \\(O\\) and 2 \\(H\\) are 0.050 Angstrom apart")


def test_bad_input_open_shell_and_spin_and_charge():
    _bad(molecule("OH"), "closed-shell.*magnetic moments")   # ase.build's OH radical carries a magnetic moment
    ohr = molecule("OH")
    ohr.set_initial_magnetic_moments(None)
    _bad(ohr, "closed-shell molecules only.*9 electrons")
    _bad(_water(), "closed-shell molecules only.*11 electrons", charge=-1)
    _bad(_water(), "spin=2", spin=2)
    _bad(_water(), "charge must be an integer", charge=0.5)
    _bad(Atoms("H", positions=[[0, 0, 0]]), "1 electrons|closed-shell", charge=0)


def test_bad_input_empty_and_ghost():
    _bad(Atoms(), "no atoms")
    _bad(Atoms("XH2", positions=[[0, 0, 0], [0, 0.8, 0.6], [0, -0.8, 0.6]]), "ghost")


def test_bad_parameters():
    with pytest.raises(InputError, match="basis_set"):
        WaveCalculator(basis_set="sto-3g")
    with pytest.raises(InputError, match="basis_set"):
        WaveCalculator().set(basis_set="sto-3g")
    with pytest.raises(InputError, match="pbee"):
        WaveCalculator(method="pbee").get_potential_energy(_water())
    with pytest.raises(InputError, match="do not apply"):
        WaveCalculator(provider=providers.PySCFProvider("hf", "sto-3g"), basis="sto-3g")


def test_check_atoms_supported_elements_and_charges():
    with pytest.raises(InputError, match="element N \\(Z=7\\) is not supported; supported elements: H, C, O"):
        check_atoms(molecule("NH3"), elements=[1, 6, 8])
    with pytest.raises(InputError, match="charge 2 is not supported"):
        check_atoms(_water(), charge=2, charges={0})
    check_atoms(_water(), elements=["H", "O"], basis="def2-svp")
    nh4 = Atoms("NH4", positions=[[0, 0, 0], [0.6, 0.6, 0.6], [-0.6, -0.6, 0.6], [-0.6, 0.6, -0.6],
                                  [0.6, -0.6, -0.6]])
    check_atoms(nh4, charge=1)
    with pytest.raises(InputError, match="11 electrons"):
        check_atoms(nh4, charge=0)


def test_scf_failure_raises_calculation_failed():
    atoms = _water()
    atoms.calc = WaveCalculator(method="pbe", basis="sto-3g", max_cycle=1)
    with pytest.raises(CalculationFailed, match="did not converge"):
        atoms.get_potential_energy()


class _RaisingProvider(providers.HamiltonianProvider):
    """A provider whose compute raises the given exception."""

    basis = "sto-3g"

    def __init__(self, exc):
        self.exc = exc

    def compute(self, numbers, positions_bohr, want_gradient=False):
        raise self.exc


def test_programming_errors_in_a_provider_surface_as_themselves():
    """A bug in a provider (TypeError, KeyError, ...) is not disguised as CalculationFailed."""
    for exc in (TypeError("bug"), KeyError("missing"), AttributeError("no such thing")):
        atoms = _water()
        atoms.calc = WaveCalculator(provider=_RaisingProvider(exc))
        with pytest.raises(type(exc)) as info:
            atoms.get_potential_energy()
        assert info.value is exc and not isinstance(info.value, CalculationFailed)


@pytest.mark.parametrize("exc", [np.linalg.LinAlgError("S is not positive definite"),
                                 torch.linalg.LinAlgError("eigh failed to converge")])
def test_numerical_failures_in_a_provider_raise_calculation_failed(exc):
    atoms = _water()
    atoms.calc = WaveCalculator(provider=_RaisingProvider(exc))
    with pytest.raises(CalculationFailed, match="failed: .*LinAlgError") as info:
        atoms.get_potential_energy()
    assert info.value.__cause__ is exc


def _hf_energy(atoms, charge):
    """RHF/STO-3G total energy (eV) of ``atoms`` at ``charge``, computed with PySCF here."""
    from pyscf import gto, scf

    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)], basis="sto-3g",
                charge=charge, unit="Angstrom", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-10
    return mf.kernel() * HARTREE


def test_charge_from_atoms_info_and_initial_charges_is_honoured():
    """atoms.info["charge"] (MACE-OMOL/fairchem convention) and initial charges summing to the total
    (tblite's) give the cation's energy with PySCF, and changing info["charge"] triggers a new calculation."""
    atoms = molecule("H2O")
    atoms.calc = WaveCalculator(method="hf", basis="sto-3g")
    neutral = atoms.get_potential_energy()
    assert abs(neutral - _hf_energy(atoms, 0)) < 1e-6
    atoms.info["charge"] = 2
    dication = atoms.get_potential_energy()
    assert abs(dication - _hf_energy(atoms, 2)) < 1e-6 and dication - neutral > 10.0
    atoms.info["charge"] = 0
    assert abs(atoms.get_potential_energy() - neutral) < 1e-6
    other = molecule("H2O")
    other.set_initial_charges([1.0, 0.5, 0.5])
    other.calc = WaveCalculator(method="hf", basis="sto-3g")
    assert abs(other.get_potential_energy() - dication) < 1e-6


def test_spin_and_contradicting_charges_are_refused():
    atoms = molecule("H2O")
    atoms.set_initial_magnetic_moments([2.0, 0.0, 0.0])
    _bad(atoms, "closed-shell.*magnetic moments")
    atoms = molecule("H2O")
    atoms.info["spin"] = 3      # multiplicity: a triplet
    _bad(atoms, "closed-shell.*multiplicity")
    atoms.info["spin"] = 1      # a singlet is fine
    atoms.calc = WaveCalculator(method="hf", basis="sto-3g")
    assert np.isfinite(atoms.get_potential_energy())
    atoms = molecule("H2O")
    atoms.info["charge"] = 2
    atoms.set_initial_charges([0.0, 0.0, 0.0])
    atoms.set_initial_charges([2.0, 0.0, -2.0])      # sums to 0: contradicts info
    _bad(atoms, "two different total charges")
    atoms = molecule("H2O")
    atoms.info["charge"] = 2
    _bad(atoms, "charge=-2 was asked for", charge=-2)
    atoms.info["charge"] = 0.5
    _bad(atoms, "must be an integer")


def test_a_model_refuses_a_charge_it_was_not_trained_for():
    from ase_wavecalc.model.io import available_models

    assert "water-pbe-def2svp" in available_models()   # shipped with the package: its absence is a bug
    atoms = molecule("H2O")
    atoms.info["charge"] = 2
    calc = WaveCalculator(model="water-pbe-def2svp")
    words = "model 'water-pbe-def2svp' was trained for molecules of total charge 0"
    with pytest.raises(InputError, match=words + ".*charge 2 was asked for \\(atoms.info\\['charge'\\]\\)") as info:
        calc.get_potential_energy(atoms)
    assert "ModelProvider(" not in str(info.value)
    with pytest.raises(InputError, match=words + ".*charge 2 was asked for \\(charge parameter\\)"):
        WaveCalculator(model="water-pbe-def2svp", charge=2).get_potential_energy(molecule("H2O"))


def test_model_provider_does_not_change_the_module_it_is_given():
    """A module in float32 and train mode stays so (the provider works on a float64 eval copy); one already
    in float64 eval mode is used as it is, so a change made to it in place is seen at once."""
    import torch

    from ase_wavecalc.model import build_model, default_config
    from ase_wavecalc.providers import ModelProvider

    net = build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1)).float().train()
    provider = ModelProvider(net, dtype="float64")
    assert net.training and next(net.parameters()).dtype == torch.float32
    assert provider.model is not net and next(provider.model.parameters()).dtype == torch.float64
    ready = build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1)).double().eval()
    assert ModelProvider(ready, dtype="float64").model is ready
