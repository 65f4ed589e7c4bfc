"""Sampling and `wavecalc generate`: end to end, kill -9 and resume, SCF failures, Dask."""
import concurrent.futures as cf
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from ase.build import molecule
from ase.io import write

from ase_wavecalc import cli, generate as generate_module
from ase_wavecalc.dataset import connect, frame_ids, metadata, read_candidates, read_dataset
from ase_wavecalc.generate import generate
from ase_wavecalc.reference import run_reference
from ase_wavecalc.sampling import load_structure, sample_geometries
from ase_wavecalc.units import BOHR

FAST = dict(method="hf", basis="sto-3g", equilibration=20, interval=10, progress=False, log=lambda *a: None)


# ---------------------------------------------------------------------------------------------- sampling


def test_load_structure_from_name_and_files(tmp_path):
    water = load_structure("H2O")
    assert water.get_chemical_formula() == "H2O" and water.calc is None and not water.pbc.any()
    traj = [molecule("CH4"), molecule("NH3")]
    write(tmp_path / "m.xyz", traj)
    write(tmp_path / "m.extxyz", traj)
    write(tmp_path / "m.db", traj)
    for name in ("m.xyz", "m.extxyz", "m.db"):
        assert load_structure(tmp_path / name).get_chemical_formula() == "CH4"  # first structure
    assert load_structure(f"{tmp_path / 'm.xyz'}@1").get_chemical_formula() == "H3N"
    with pytest.raises(ValueError, match="neither an existing file"):
        load_structure("not-a-molecule")


def test_sampling_is_deterministic_and_thermal():
    water = load_structure("H2O")
    a, info = sample_geometries(water, 4, temperature=500, seed=7, equilibration=40)
    b, _ = sample_geometries(water, 4, temperature=500, seed=7, equilibration=40)
    c, _ = sample_geometries(water, 4, temperature=500, seed=8, equilibration=40)
    # the same seed, the same trajectory: to rounding (1e-8 A), not to the bit, which depends on the CPU
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)
    assert np.abs(a - c).max() > 1e-3
    longer, _ = sample_geometries(water, 6, temperature=500, seed=7, equilibration=40)
    np.testing.assert_allclose(longer[:4], a, rtol=0, atol=1e-8)  # more frames continue the same trajectory
    assert info["temperature_K"] == 500 and info["seed"] == 7 and info["interval_steps"] == 25
    d_oh = np.linalg.norm(a[:, 1] - a[:, 0], axis=-1)
    assert np.all((0.85 < d_oh) & (d_oh < 1.15)) and np.std(d_oh) > 1e-3  # bonded, but moving
    with pytest.raises(ValueError, match="temperature"):
        sample_geometries(water, 2, temperature=-5)


def test_pyscf_fallback_driver():
    water = load_structure("H2O")
    a, info = sample_geometries(water, 2, seed=1, equilibration=4, interval=3, driver="pyscf")
    b, _ = sample_geometries(water, 2, seed=1, equilibration=4, interval=3, driver="pyscf")
    assert info["driver"].startswith("HF/STO-3G")
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-8)


# ---------------------------------------------------------------------------------------------- generate


def test_generate_end_to_end_two_workers(tmp_path):
    out = tmp_path / "water.db"
    s = generate("H2O", out, n_frames=3, workers=2, seed=2, **FAST)
    assert s["computed"] == 3 and not s["not_converged"] and not s["errors"]
    d = read_dataset(out)
    assert list(d["frame"]) == [0, 1, 2] and d["fock"].shape == (3, 7, 7)
    numbers, candidates = read_candidates(connect(out))
    np.testing.assert_allclose(d["positions_bohr"], candidates, rtol=1e-15)
    ref = run_reference(numbers, candidates[1] * BOHR, method="hf", basis="sto-3g")
    assert abs(d["e_tot"][1] - ref["e_tot"]) < 1e-10
    np.testing.assert_allclose(d["gradient"][1], ref["gradient"], atol=1e-8)
    md = metadata(out)
    assert md["method"] == "rhf" and md["basis"] == "sto-3g" and md["sampler"]["seed"] == 2
    try:   # GFN2-xTB when tblite is installed (the test extras install it), else the PySCF fallback
        import tblite.ase  # noqa: F401
        expected = "GFN2-xTB"
    except ImportError:
        expected = "HF/STO-3G"
    assert md["sampler"]["driver"].startswith(expected)

    again = generate("H2O", out, n_frames=3, workers=2, seed=2, **FAST)  # nothing left to do
    assert again["computed"] == 0 and again["already_done"] == 3
    with pytest.raises(ValueError, match="seed"):
        generate("H2O", out, n_frames=3, seed=3, **FAST)
    with pytest.raises(ValueError, match="basis"):
        generate("H2O", out, n_frames=3, seed=2, **{**FAST, "basis": "6-31g"})


def test_generate_labels_given_geometries(tmp_path):
    """--geometries: every selected frame of a trajectory is labelled (no MD), resumable, checked."""
    from ase.io import Trajectory

    base = molecule("H2O")
    rng = np.random.default_rng(0)
    traj_path = tmp_path / "md.traj"
    with Trajectory(traj_path, "w") as traj:
        for _ in range(4):
            a = base.copy()
            a.positions += 0.05 * rng.normal(size=a.positions.shape)
            traj.write(a)
    out = tmp_path / "labelled.db"
    s = generate(f"{traj_path}@1:", out, geometries=True, workers=1, threads=1, **FAST)
    assert s["computed"] == 3 and not s["errors"]
    d = read_dataset(out)
    from ase.io import read
    frames = read(traj_path, ":")
    np.testing.assert_allclose(d["positions_bohr"] * BOHR, [a.positions for a in frames[1:]], atol=1e-12)
    ref = run_reference(d["numbers"], frames[2].positions, method="hf", basis="sto-3g")
    assert abs(d["e_tot"][1] - ref["e_tot"]) < 1e-10
    md = metadata(out)
    assert md["sampler"]["mode"] == "file" and md["sampler"]["n_frames"] == 3
    assert generate(f"{traj_path}@1:", out, geometries=True, **FAST)["computed"] == 0  # resumed: nothing to do
    with pytest.raises(ValueError, match="other candidates"):
        generate(f"{traj_path}@0:", out, geometries=True, **FAST)
    with pytest.raises(ValueError, match="structure file"):
        generate("H2O", out, n_frames=3, **FAST)  # MD sampling into a file-labelled dataset
    write(tmp_path / "mixed.xyz", [base, molecule("NH3")])
    with pytest.raises(ValueError, match="other atoms"):
        generate(tmp_path / "mixed.xyz", tmp_path / "mixed.db", geometries=True, **FAST)
    with pytest.raises(ValueError, match="no such file"):
        generate(tmp_path / "missing.traj", tmp_path / "x.db", geometries=True, **FAST)


KILL_SCRIPT = """
import os, signal, sys
from ase_wavecalc import cli, generate
write_frame, at = generate.write_frame, int(sys.argv[1])
calls = []

def write_then_die(*args, **kwargs):   # the at-th frame: written, its transaction not yet committed
    write_frame(*args, **kwargs)
    calls.append(1)
    if len(calls) == at:
        os.killpg(os.getpgrp(), signal.SIGKILL)   # this process and its reference workers

generate.write_frame = write_then_die
sys.exit(cli.main(sys.argv[2:]))
"""


def test_sigkill_then_resume(tmp_path):
    """kill -9 the whole job (main process and workers) again and again in the middle of writing a frame,
    restarting it each time; the same command then finishes the set: no frame lost, none duplicated, none
    half-written."""
    out = tmp_path / "kill.db"
    n = 6
    args = ["generate", "H2O", "--out", str(out), "--method", "pbe", "--basis", "sto-3g", "--grid-level", "1",
            "--n-frames", str(n), "--seed", "5", "--interval", "10", "--equilibration", "20", "--workers", "1",
            "--quiet"]
    partial = None
    for kill_at, rows in ((2, 1), (3, 3)):   # die inside the kill_at-th frame's transaction of each run
        proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(kill_at), *args], start_new_session=True,
                              capture_output=True, text=True)
        assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
        with sqlite3.connect(out) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        now = read_dataset(out)  # whole frames only, all arrays present; the killed frame's row is not there
        assert len(set(now["frame"])) == len(now["frame"]) == rows
        if partial is not None:   # what an earlier run wrote is still there, unchanged
            for i, frame in enumerate(partial["frame"]):
                assert now["e_tot"][list(now["frame"]).index(frame)] == partial["e_tot"][i]
        partial = now
    candidates_before = read_candidates(connect(out))[1]

    done = subprocess.run([sys.executable, "-m", "ase_wavecalc.cli", *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    d = read_dataset(out)
    assert list(d["frame"]) == list(range(n))  # none lost, none duplicated
    np.testing.assert_array_equal(read_candidates(connect(out))[1], candidates_before)
    for i, frame in enumerate(partial["frame"]):  # frames from before the kill are kept as they were
        assert d["e_tot"][frame] == partial["e_tot"][i]
    assert f"{n} good frames of {n}" in done.stdout


def test_not_converged_frames_are_reported_and_stored_as_failed(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bad.db"
    with cf.ThreadPoolExecutor(1) as pool:
        s = generate("H2O", out, n_frames=2, seed=4, max_cycle=1, executor=pool,
                     **{**FAST, "method": "pbe"})
    assert s["not_converged"] == [0, 1] and s["computed"] == 0
    db = connect(out)
    rows = list(db.select())
    assert all(not r.converged and "not converged" in r.error for r in rows)
    assert all(r.get("energy") is None and not r.data for r in rows)  # nothing that looks like a result
    with pytest.raises(ValueError, match="no converged frames"):
        read_dataset(out)

    # the CLI reports them (a thread pool stands in for the process pool to keep this fast)
    monkeypatch.setattr(generate_module, "_make_executor",
                        lambda *a: (cf.ThreadPoolExecutor(1), "test threads", lambda: None))
    args = ["generate", "H2O", "--out", str(out), "--method", "pbe", "--basis", "sto-3g", "--n-frames", "2",
            "--seed", "4", "--interval", "10", "--equilibration", "20", "--quiet"]
    assert cli.main(args + ["--max-cycle", "1"]) == 0
    assert "2 frames did not converge" in capsys.readouterr().out
    assert cli.main(args + ["--retry-failed"]) == 0
    assert "2 good frames of 2" in capsys.readouterr().out
    assert frame_ids(connect(out), converged=True) == {0, 1} and len(connect(out)) == 2


def test_dask_executor(tmp_path):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "dask.db"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        s = generate("H2O", out, n_frames=2, seed=6, dask_scheduler=cluster.scheduler_address, **FAST)
    assert s["computed"] == 2
    assert list(read_dataset(out)["frame"]) == [0, 1]
