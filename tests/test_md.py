"""ase_wavecalc.md.run_md: the ensembles it promises (cheap pair potentials, so runs can be long)."""
import numpy as np
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
