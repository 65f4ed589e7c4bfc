"""ase_wavecalc.md.run_md: the ensembles it promises (cheap pair potentials, so runs can be long)."""
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.morse import MorsePotential

from ase_wavecalc.md import run_md


def _triatomic():
    """An O-H-H-like molecule (unequal masses) bound by a Morse pair potential (eV, Angstrom)."""
    atoms = Atoms("OH2", positions=[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.866, 0.0]])   # at the minimum
    return atoms, MorsePotential(epsilon=2.0, rho0=3.0, r0=1.0)


def test_langevin_samples_the_bath_temperature_for_unequal_masses():
    """The mean kinetic temperature of a 3-atom molecule with light and heavy atoms equals the bath's.
    (ASE's Langevin(fixcm=True) fails this: it heats the light atoms, to ~2.5x the bath here.)"""
    atoms, calc = _triatomic()
    temps = []
    for seed in range(4):
        rec = run_md(atoms, calc, ensemble="langevin", temperature=300.0, timestep=0.5, steps=3000,
                     friction=0.05, seed=seed, log=None, progress=False)
        temps.append(rec["temperature_K"][200:].mean())
    # 4 x 2800 steps of 0.5 fs with a 20 fs thermostat time: ~280 independent samples of 6 degrees of freedom
    assert abs(np.mean(temps) - 300.0) < 30.0, temps


def test_nve_conserves_energy():
    atoms, calc = _triatomic()
    rec = run_md(atoms, calc, ensemble="nve", temperature=300.0, timestep=0.25, steps=2000, seed=1, log=None,
                 progress=False)
    assert rec["max_deviation_meV_per_atom"] < 0.5
    assert rec["temperature_K"].mean() > 50.0          # it moved


def test_langevin_keeps_the_users_constraints(tmp_path):
    from ase.constraints import FixAtoms
    from ase.io import read

    atoms, calc = _triatomic()
    atoms.set_constraint(FixAtoms(indices=[0]))
    traj = tmp_path / "md.traj"
    run_md(atoms, calc, ensemble="langevin", temperature=300.0, timestep=0.5, steps=50, seed=0, log=None,
           trajectory=str(traj), progress=False)
    frames = read(traj, ":")
    np.testing.assert_allclose(frames[-1].positions[0], atoms.positions[0], atol=1e-12)
    assert np.abs(frames[-1].positions[1:] - atoms.positions[1:]).max() > 1e-3


def test_nve_starts_at_the_temperature_of_its_vibrations_and_settles_at_half(tmp_path):
    """#23: `wavecalc md H2O` (NVE, 300 K) started at 132 K and reported 70.7 K, counting 9 degrees of freedom
    of which only the 3 vibrations hold energy. Now the start is exactly 300 K over 3N - 6 = 3, no net
    momentum or rotation appears along the run, and from the minimum the temperature settles at half the
    start (equipartition of a near-harmonic molecule: kinetic and potential energy share it)."""
    from ase.io import read

    for seed in range(2):
        atoms, calc = _triatomic()
        rec = run_md(atoms, calc, ensemble="nve", temperature=300.0, timestep=0.25, steps=3000, seed=seed, log=None,
                     progress=False, trajectory=None)
        assert rec["degrees_of_freedom"] == 3
        assert rec["temperature_K"][0] == pytest.approx(300.0, rel=1e-9)
        assert 0.45 < rec["temperature_K"].mean() / 300.0 < 0.55, rec["temperature_K"].mean()
    atoms, calc = _triatomic()
    run_md(atoms, calc, ensemble="nve", temperature=300.0, timestep=0.25, steps=400, seed=0, log=None,
           progress=False, trajectory=str(tmp_path / "nve.traj"))
    for frame in read(tmp_path / "nve.traj", "::100"):
        scale = np.sqrt(frame.get_masses().sum() * frame.get_kinetic_energy())    # amu^1/2 eV^1/2
        assert np.abs(frame.get_momenta().sum(axis=0)).max() < 1e-9 * scale
        assert np.abs(frame.get_angular_momentum()).max() < 1e-6 * scale


def test_degrees_of_freedom():
    """3N - 6 in NVE (3N - 5 linear), 3N - 3 in Langevin (centre of mass fixed, the bath turns the molecule),
    ASE's count with the user's constraints."""
    from ase.build import molecule
    from ase.constraints import FixAtoms

    from ase_wavecalc.md import degrees_of_freedom

    assert degrees_of_freedom(molecule("H2O"), "nve") == 3
    assert degrees_of_freedom(molecule("CO2"), "nve") == 4
    assert degrees_of_freedom(molecule("H2"), "nve") == 1
    assert degrees_of_freedom(molecule("CH3CH2OH"), "nve") == 21
    assert degrees_of_freedom(molecule("H2O"), "langevin") == 6
    fixed = molecule("H2O")
    fixed.set_constraint(FixAtoms(indices=[0]))
    assert degrees_of_freedom(fixed, "nve") == degrees_of_freedom(fixed, "langevin") == 6


def test_langevin_reports_no_energy_drift():
    """Under a thermostat the total energy is exchanged with the bath: no drift or slope is printed or
    returned (they are for NVE); the temperature line names the bath and the 3N - 3 degrees of freedom."""
    import io

    atoms, calc = _triatomic()
    log = io.StringIO()
    rec = run_md(atoms, calc, ensemble="langevin", temperature=300.0, timestep=0.5, steps=100, seed=0, log=log,
                 progress=False)
    text = log.getvalue()
    assert "drift" not in text and "slope" not in text and "total energy" not in text
    assert "start 300.0 K" in text and "(bath 300 K), over 6 degrees of freedom (3N - 3" in text
    assert not any(k.startswith("drift") or k.startswith("max_deviation") for k in rec)
    assert rec["temperature_K"][0] == pytest.approx(300.0, rel=1e-9)
    log = io.StringIO()
    rec = run_md(atoms, calc, ensemble="nve", temperature=300.0, timestep=0.5, steps=100, seed=0, log=log,
                 progress=False)
    assert "drift" in log.getvalue() and "settles near half" in log.getvalue()
    assert {"drift_meV_per_atom", "drift_meV_per_atom_per_ps"} <= set(rec)
