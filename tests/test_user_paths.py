"""What a user runs first: the README's main command, the examples, and changing a calculator's settings."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule
from ase.io import read

from ase_wavecalc import WaveCalculator

ROOT = Path(__file__).resolve().parents[1]


def test_readme_main_command_runs_a_few_md_steps(tmp_path):
    """`wavecalc md H2O --steps N --timestep 0.5 --trajectory X` (the README's main job, shortened): every
    step is written, and NVE conserves the total energy."""
    from ase_wavecalc.cli import main

    traj = tmp_path / "water_nve.traj"
    assert main(["md", "H2O", "--steps", "40", "--timestep", "0.5", "--trajectory", str(traj)]) == 0
    frames = read(traj, ":")
    assert len(frames) == 41
    etot = np.array([f.get_potential_energy() + f.get_kinetic_energy() for f in frames])
    assert np.abs(etot - etot[0]).max() / 3 < 1e-3          # eV per atom


@pytest.mark.slow
@pytest.mark.parametrize("script, args, summary", [
    ("md.py", ["--molecule", "water", "--steps", "5", "--ensemble", "both"], "md_water"),
    ("orbitals_cube.py", ["--molecule", "water", "--size", "12"], "orbitals"),
    ("optimize_ethanol.py", ["--steps", "3", "--pyscf-steps", "0"], "opt_ethanol"),
    ("vibrations_water.py", ["--ref-steps", "1"], "vibrations"),
])
def test_examples_run(script, args, summary, tmp_path):
    """Each example in a smoke mode (few steps), as a user runs it: exit status 0 and its JSON summary."""
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args, "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    written = list(tmp_path.glob("*.json"))
    assert written, f"{script} wrote no JSON summary"
    assert any(summary in p.name for p in written), [p.name for p in written]
    for p in written:
        json.loads(p.read_text())


def test_set_model_and_dtype_rebuild_the_provider():
    """calc.set(model=...) and calc.set(dtype=...) drop the results and rebuild the provider: another model
    gives its own energy, float32 gives the same energy to float32 precision. (dtype is the eager network's:
    fast=None; the default fast path is float32 whatever dtype says, tests/test_fast_energy.py.)"""
    atoms = molecule("H2O")
    calc = WaveCalculator(model="water-pbe-def2svp", fast=None)
    atoms.calc = calc
    e_pbe = atoms.get_potential_energy()
    first = calc.provider
    calc.set(model="water-ccsdt-transfer")
    assert not calc.results
    e_cc = atoms.get_potential_energy()
    assert calc.provider is not first and calc.levels_of_theory["energy"].startswith("CCSD(T)")
    assert abs(e_cc - e_pbe) > 1.0                          # two levels of theory: eV apart in total energy
    calc.set(dtype="float32")
    e32 = atoms.get_potential_energy()
    assert str(calc.provider.dtype).endswith("float32")
    assert e32 == pytest.approx(e_cc, abs=5e-3) and e32 != e_cc
    calc.set(dtype="float32")                               # no change: the provider stays
    kept = calc.provider
    atoms.get_potential_energy()
    assert calc.provider is kept


@pytest.mark.long
def test_water_nve_10000_steps(tmp_path):
    """10,000 NVE steps (5 ps) with the shipped water model: no failure; energy drift reported and bounded.
    Outside the default run: `python -m pytest -m long` (about 10 min on one core)."""
    from ase_wavecalc.md import run_md

    atoms = molecule("H2O")
    out = run_md(atoms, WaveCalculator(model="water-pbe-def2svp"), ensemble="nve", steps=10000, timestep=0.5,
                 temperature=300.0, seed=1, trajectory=None, progress=False, log=sys.stdout)
    print(f"drift {out['drift_meV_per_atom']:+.4f} meV/atom, max deviation {out['max_deviation_meV_per_atom']:.4f} "
          f"meV/atom, slope {out['drift_meV_per_atom_per_ps']:+.5f} meV/atom/ps")
    assert len(out["etot_eV"]) == 10001
    assert out["max_deviation_meV_per_atom"] < 1.0
    assert abs(out["drift_meV_per_atom_per_ps"]) < 0.05
