"""More from the predicted wavefunction: exact SCF from the model's density (refine="scf") and IR spectra."""
import csv

import numpy as np
import pytest
from ase.build import molecule
from ase.calculators.calculator import InputError

from ase_wavecalc import WaveCalculator
from ase_wavecalc.ir import dipole_spectrum, harmonic_ir


@pytest.fixture(scope="module")
def water():
    atoms = molecule("H2O")
    atoms.rattle(0.02, seed=3)
    return atoms


def test_refine_scf_returns_pyscf_in_fewer_cycles(water):
    """refine="scf" gives PySCF's converged energy, forces and dipole at the model's level, started from
    the model's density: fewer cycles than PySCF's default (minao) guess."""
    refined = water.copy()
    refined.calc = WaveCalculator(model="water-pbe-def2svp", refine="scf")
    exact = water.copy()
    exact.calc = WaveCalculator(method="pbe", basis="def2-svp", conv_tol=1e-10)
    assert refined.get_potential_energy() == pytest.approx(exact.get_potential_energy(), abs=1e-6)
    assert np.abs(refined.get_forces() - exact.get_forces()).max() < 1e-4
    assert np.abs(refined.get_dipole_moment() - exact.get_dipole_moment()).max() < 1e-5
    assert refined.calc._result.info["initial_guess"] == "model density"
    assert exact.calc._result.info["initial_guess"] == "default"
    assert refined.calc.scf_cycles < exact.calc.scf_cycles
    model_only = water.copy()
    model_only.calc = WaveCalculator(model="water-pbe-def2svp")
    model_only.get_potential_energy()
    assert model_only.calc.scf_cycles is None


def test_refine_refuses_what_it_cannot_do(water):
    with pytest.raises(InputError, match="needs model="):
        WaveCalculator(refine="scf").get_potential_energy(water)
    with pytest.raises(InputError, match="refine must be"):
        WaveCalculator(model="water-pbe-def2svp", refine="newton").get_potential_energy(water)
    with pytest.raises(InputError, match="mix two potential energy surfaces"):   # CCSD(T) energies, PBE F
        WaveCalculator(model="water-ccsdt-transfer", refine="scf").get_potential_energy(water)


def test_dipole_spectrum_finds_the_frequency_of_an_oscillating_dipole():
    dt = 0.5                                           # fs
    t = np.arange(8000) * dt
    nu = 1650.0 * 2.99792458e-5                        # cm^-1 -> 1/fs
    mu = np.stack([0.1 * np.cos(2 * np.pi * nu * t), 0.02 * np.sin(2 * np.pi * 2.2 * nu * t), np.ones_like(t)], 1)
    freq, inten = dipole_spectrum(mu, dt)
    assert abs(freq[np.argmax(inten)] - 1650.0) < 5.0
    second = inten[np.abs(freq - 2.2 * 1650.0) < 10].max()
    assert 0.05 < second < 0.5                          # weaker amplitude, but x omega^2 in the rate
    with pytest.raises(ValueError, match="NaN"):
        dipole_spectrum(np.full((20, 3), np.nan), dt)


def test_harmonic_ir_of_water_from_the_model():
    """ase.vibrations.Infrared on the model: three vibrations, at the frequencies of the analytic Hessian,
    with water's intensity pattern (the bend strongest, the symmetric stretch weakest)."""
    from ase.optimize import BFGS
    from ase.vibrations import VibrationsData

    atoms = molecule("H2O")
    calc = WaveCalculator(model="water-pbe-def2svp")
    atoms.calc = calc
    BFGS(atoms, logfile=None).run(fmax=1e-4)
    ir = harmonic_ir(atoms, calc)
    assert len(ir["frequencies_cm"]) == 3
    analytic = np.sort(np.real(VibrationsData.from_2d(atoms, calc.get_hessian(atoms)).get_frequencies()))[-3:]
    assert np.abs(np.sort(ir["frequencies_cm"]) - analytic).max() < 3.0
    bend, sym, asym = ir["intensities_km_mol"][np.argsort(ir["frequencies_cm"])]
    assert bend > asym > sym > 0


def test_wavecalc_ir_writes_spectrum_and_harmonic_bands(tmp_path, capsys, monkeypatch):
    """Langevin equilibration, NVE segments, the spectrum with the harmonic bands on its axis (CSV, PNG); the
    trajectory keeps the segments, so re-reading it gives the same spectrum without MD. The calculator is
    created with compile="auto" (here never reached: a real compilation takes minutes)."""
    from ase_wavecalc import calculator as calculator_mod
    from ase_wavecalc.cli import main
    from ase_wavecalc.model import compiled as compiled_mod

    monkeypatch.setattr(compiled_mod, "AUTO_AFTER", 10**9)
    made = []

    class Recording(calculator_mod.WaveCalculator):
        def __init__(self, **kwargs):
            made.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(calculator_mod, "WaveCalculator", Recording)
    out = tmp_path / "water_ir"
    assert main(["ir", "H2O", "--steps", "200", "--equilibration-steps", "40", "--segments", "2",
                 "--decorrelation-steps", "20", "--out", str(out)]) == 0
    assert made and all(kw.get("compile") == "auto" for kw in made)
    printed = capsys.readouterr().out
    assert "equilibration: Langevin 40 steps" in printed and "production: 2 NVE segment(s) of 100 steps" in printed
    assert "mean temperature" in printed and "over 3 degrees of freedom" in printed
    with open(out.with_suffix(".csv")) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frequency_cm-1", "intensity_normalized", "md_km_mol_per_cm-1", "harmonic_normalized",
                       "harmonic_km_mol_per_cm-1"] and len(rows) > 5
    table = np.array(rows[1:], dtype=float)
    assert table[:, 1].max() == 1.0 and table[:, 3].max() == 1.0 and np.all(table[:, 2] >= 0)
    harmonic_curve = table[:, 4].sum() * (table[1, 0] - table[0, 0])     # the harmonic km/mol, on the MD's axis
    with open(tmp_path / "water_ir_harmonic.csv") as f:
        bands = list(csv.reader(f))
    assert bands[0] == ["frequency_cm-1", "intensity_km_mol", "md_band_km_mol"] and len(bands) == 4
    assert harmonic_curve == pytest.approx(sum(float(b[1]) for b in bands[1:]), rel=0.05)
    assert out.with_suffix(".traj").is_file()
    # re-reading the trajectory gives the same MD spectrum without MD (the harmonic bands are computed again,
    # optimized from the trajectory's first frame)
    assert main(["ir", "H2O", "--trajectory", str(out.with_suffix(".traj")), "--out", str(tmp_path / "again")]) == 0
    with open(tmp_path / "again.csv") as f:
        again = list(csv.reader(f))
    assert [r[:3] for r in again] == [r[:3] for r in rows]
    assert np.array(again[1:], dtype=float)[:, 4] == pytest.approx(table[:, 4], rel=0.02, abs=1e-3)
