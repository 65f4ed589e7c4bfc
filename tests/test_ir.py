"""The MD infrared spectrum (ase_wavecalc.ir): the quantum correction, the spectrum of known dipole signals in
absolute units, and the thermalization (Langevin, then NVE) on cheap spring models; no wavefunction model."""
import numpy as np
import pytest
from ase import units
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes

from ase_wavecalc.ir import (C_CM_PER_FS, absorption_spectrum, band_integrals, harmonic_band_spectrum, harmonic_ir,
                             quantum_correction, thermalized_dipoles)

KM_MOL_PER_E2_AMU = 42.255 / units.Debye ** 2      # ase Infrared's km/mol of |d mu / dQ| = 1 e*A / (A sqrt(amu))


class Springs(Calculator):
    """Harmonic springs (k in eV/A^2) between the atom pairs closer than ``cutoff`` (A) in ``reference``, at
    their reference lengths; the dipole of fixed point ``charges`` (e)."""
    implemented_properties = ["energy", "forces", "dipole"]

    def __init__(self, reference, charges, cutoff=2.0, k=lambda i, j: 30.0, **kwargs):
        super().__init__(**kwargs)
        d = np.linalg.norm(reference.positions[:, None] - reference.positions[None], axis=-1)
        self.i, self.j = np.nonzero(np.triu(d < cutoff, 1))
        self.r0 = d[self.i, self.j]
        self.k = np.array([k(a, b) for a, b in zip(self.i, self.j)])
        self.q = np.asarray(charges, dtype=float)

    def check_state(self, atoms, tol=1e-15):
        """Only the positions matter (cheaper than ASE's comparison of every array, which dominates MD time)."""
        same = self.atoms is not None and np.array_equal(atoms.positions, self.atoms.positions)
        return [] if same else ["positions"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pos = self.atoms.positions
        v = pos[self.j] - pos[self.i]
        r = np.linalg.norm(v, axis=1)
        g = (self.k * (r - self.r0) / r)[:, None] * v
        forces = np.zeros_like(pos)
        np.add.at(forces, self.i, g)
        np.add.at(forces, self.j, -g)
        self.results = {"energy": 0.5 * float((self.k * (r - self.r0) ** 2).sum()), "forces": forces,
                        "dipole": (self.q[:, None] * pos).sum(axis=0)}


def spring_water():
    """Water with stiff O-H springs and a soft H-H spring: bend ~990, stretches ~3810 and ~3980 cm^-1."""
    atoms = molecule("H2O")
    return atoms, Springs(atoms, [-0.8, 0.4, 0.4], k=lambda i, j: 5.0 if i and j else 50.0)


def mode(wavenumber_cm, dmu_dq, temperature, t_fs, phase=0.3):
    """The dipole (T, 3) of a harmonic mode of ``wavenumber_cm`` holding k_B T, with dmu/dQ in e*A/(A sqrt(amu))."""
    omega = 2 * np.pi * C_CM_PER_FS * wavenumber_cm                      # rad/fs
    amplitude = np.sqrt(2 * units.kB * temperature) / (omega / units.fs)  # A sqrt(amu): E = omega^2 Q0^2 / 2
    return dmu_dq * amplitude * np.stack([np.cos(omega * t_fs + phase), np.zeros_like(t_fs), np.zeros_like(t_fs)], 1)


def test_harmonic_quantum_correction_goes_from_1_to_beta_hbar_omega():
    x_per_cm = units._hplanck * units._c * 100 / (units._k * 300.0)      # hbar omega / kT per cm^-1 at 300 K
    low = np.array([1e-9, 1e-3, 0.1])
    assert quantum_correction(low, 300.0) == pytest.approx(1.0 + 0.5 * low * x_per_cm, rel=1e-7)   # -> 1 + x / 2
    high = np.array([1600.0, 3700.0])
    assert np.allclose(quantum_correction(high, 300.0), high * x_per_cm, rtol=1e-3)   # x / (1 - e^-x) -> x
    q = quantum_correction(np.linspace(0, 4000, 41), 300.0)
    assert np.all(np.diff(q) > 0)
    assert quantum_correction(3700.0, 1e6) == pytest.approx(1.0, abs=0.01)               # classical limit
    assert quantum_correction(1e-6, 300.0, "standard") == pytest.approx(1.0)
    assert quantum_correction(1e5, 300.0, "standard") == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown quantum correction"):
        quantum_correction(100.0, 300.0, "kubo")
    with pytest.raises(ValueError, match="> 0 K"):
        quantum_correction(100.0, 0.0)


@pytest.mark.parametrize("correction", ["harmonic", "standard", "schofield", "none"])
def test_cosines_give_bands_at_their_wavenumbers_with_the_corrected_intensities(correction):
    """mu(t) = sum_k a_k cos(omega_k t): band k at its wavenumber, integrating to a_k^2 omega_k (1 - e^-x) Q(x)
    relative to the others (the absorption of the module docstring); with the harmonic Q: a_k^2 omega_k^2."""
    dt, temperature = 0.5, 300.0
    t = np.arange(6000) * dt
    wavenumbers, amplitudes = np.array([1650.0, 2900.0, 3700.0]), np.array([0.05, 0.01, 0.02])
    mu = np.zeros((len(t), 3))
    for k, (nu, a) in enumerate(zip(wavenumbers, amplitudes)):
        mu[:, k % 3] += a * np.cos(2 * np.pi * C_CM_PER_FS * nu * t + k)
    mu += [0.3, -0.1, 1.8]                                           # a permanent dipole is no band
    freq, absorption = absorption_spectrum(mu, dt, temperature, correction=correction)
    for nu in wavenumbers:
        near = np.abs(freq - nu) < 150
        assert abs(freq[near][np.argmax(absorption[near])] - nu) < 3.0
    x = units._hplanck * units._c * 100 * wavenumbers / (units._k * temperature)
    q = quantum_correction(wavenumbers, temperature, correction)
    expected = amplitudes ** 2 * wavenumbers * -np.expm1(-x) * q
    got = band_integrals(freq, absorption, wavenumbers)
    assert got / got[0] == pytest.approx(expected / expected[0], rel=0.01)
    if correction == "harmonic":
        assert expected / expected[0] == pytest.approx((amplitudes * wavenumbers) ** 2 / (amplitudes[0] * 1650.0) ** 2)


def test_a_harmonic_mode_holding_kT_integrates_to_its_harmonic_km_mol_at_any_temperature():
    """The absolute scale: a mode with |dmu/dQ| = 0.3 e/sqrt(amu), holding k_B T, integrates to ase Infrared's
    42.255 km/mol x (0.3 / Debye)^2, whatever T and its frequency (the harmonic correction makes band
    integrals T-independent); segments average; the harmonic bands with the MD line shape integrate to theirs."""
    dt = 0.5
    t = np.arange(3000) * dt
    for nu in (1600.0, 3700.0):
        for temperature in (100.0, 300.0, 1000.0):
            freq, absorption = absorption_spectrum(mode(nu, 0.3, temperature, t), dt, temperature)
            assert band_integrals(freq, absorption, [nu])[0] == pytest.approx(KM_MOL_PER_E2_AMU * 0.09, rel=0.005)
    segments = [mode(1600.0, 0.3, 300.0, t[:2000]), mode(1600.0, 0.6, 300.0, t[:2000], phase=1.0)]
    freq, absorption = absorption_spectrum(segments, dt, 300.0)
    mean = KM_MOL_PER_E2_AMU * (0.3 ** 2 + 0.6 ** 2) / 2                 # equal lengths: the plain mean
    assert band_integrals(freq, absorption, [1600.0])[0] == pytest.approx(mean, rel=0.005)
    bands = harmonic_band_spectrum([1600.0, 3650.0, 3750.0], [60.0, 5.0, 40.0], [2000, 2000], dt)
    assert bands.shape == freq.shape
    assert band_integrals(freq, bands, [1600.0, 3650.0, 3750.0]) == pytest.approx([60.0, 5.0, 40.0], rel=0.1)
    assert bands.sum() * (freq[1] - freq[0]) == pytest.approx(105.0, rel=1e-3)


def test_langevin_equilibration_hands_nve_the_target_temperature(tmp_path):
    """A 60-atom spring network (174 vibrations): after the Langevin equilibration the NVE segments average
    the target temperature over 3N - 6 degrees of freedom; started at T from the minimum without it, NVE
    settles near T / 2 (equipartition), the '66 K' of issue #23's run."""
    from ase.io import read

    atoms = molecule("C60")
    calc = Springs(atoms, np.zeros(len(atoms)), cutoff=2.6)
    common = dict(temperature=300.0, timestep=0.5, steps=3 * 200, segments=3, decorrelation_steps=100,
                  equilibration_friction=0.05, progress=False, log=None, seed=2)
    md = thermalized_dipoles(atoms, calc, equilibration_steps=400, trajectory=str(tmp_path / "c60.traj"), **common)
    assert md["degrees_of_freedom"] == 174
    assert md["equilibration_temperature_K"] == pytest.approx(300.0, rel=0.15)
    assert md["mean_temperature_K"] == pytest.approx(300.0, rel=0.15)
    assert [t[0] for t in md["temperature_K"]] == pytest.approx([300.0] * 3, rel=0.35)   # the state handed over
    assert md["max_deviation_meV_per_atom"] < 1.0
    assert [len(d) for d in md["dipoles"]] == [201] * 3
    frames = read(tmp_path / "c60.traj", ":")       # the production frames, each with its segment
    assert len(frames) == 3 * 201 and frames[-1].info["segment"] == 2 and frames[0].info["timestep_fs"] == 0.5
    assert frames[0].info["temperature_K"] == 300.0 and frames[0].get_dipole_moment().shape == (3,)
    cold = thermalized_dipoles(atoms, calc, equilibration_steps=0, **dict(common, segments=1, steps=400))
    assert cold["temperature_K"][0][0] == pytest.approx(300.0, rel=0.05)
    assert cold["mean_temperature_K"] == pytest.approx(150.0, rel=0.2)


def test_md_bands_of_a_spring_water_match_its_harmonic_ir():
    """Equilibrated NVE segments of a (nearly harmonic) spring water: bands at the harmonic frequencies of
    ase Infrared on the same calculator, band integrals of its km/mol (within the scatter of 30 segments:
    each vibration keeps the energy its segment starts with, ~1/sqrt(30) per band), not the stretches at 1%
    of the bend."""
    atoms, calc = spring_water()
    harmonic = harmonic_ir(atoms, calc)
    centers, km_mol = harmonic["frequencies_cm"], harmonic["intensities_km_mol"]
    assert len(centers) == 3 and np.all(km_mol > 50) and centers[2] - centers[1] > 150
    dt, n, segments = 0.5, 800, 30
    md = thermalized_dipoles(atoms, calc, temperature=300.0, timestep=dt, steps=segments * n, equilibration_steps=400,
                             segments=segments, decorrelation_steps=150, equilibration_friction=0.1, seed=1,
                             progress=False, log=None)
    assert md["degrees_of_freedom"] == 3
    assert md["mean_temperature_K"] == pytest.approx(300.0, rel=0.25)
    freq, absorption = absorption_spectrum(md["dipoles"], dt, 300.0)
    edges = [500.0, 0.5 * (centers[0] + centers[1]), 0.5 * (centers[1] + centers[2]), 4500.0]
    for k, nu in enumerate(centers):
        inside = (freq > edges[k]) & (freq < edges[k + 1])
        # velocity Verlet at 0.5 fs runs a 3800 cm^-1 oscillator ~20 cm^-1 fast: 2 arcsin(omega dt / 2) / dt
        assert abs(freq[inside][np.argmax(absorption[inside])] - nu) < 40.0
    got = band_integrals(freq, absorption, centers)
    expected = band_integrals(freq, harmonic_band_spectrum(centers, km_mol, [n + 1] * segments, dt), centers)
    assert expected == pytest.approx(km_mol, rel=0.1)
    # the bend, and the two stretches together (Verlet's ~20 cm^-1 moves some of the symmetric stretch past
    # the midpoint that splits it from the antisymmetric one)
    bend, stretches = got[0] / expected[0], got[1:].sum() / expected[1:].sum()
    assert 0.65 < bend < 1.5 and 0.7 < stretches < 1.4, (got, expected)
    assert got.sum() == pytest.approx(expected.sum(), rel=0.25)
