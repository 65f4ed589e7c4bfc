"""The dataset file: round trip, atomicity, error handling, candidates, and the npz importer."""
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

from ase_wavecalc import cli
from ase_wavecalc.dataset import (FRAME_KEYS, DatasetError, connect, frame_ids, metadata,
                                  read_candidates, read_dataset, update_metadata, write_candidates,
                                  write_frame)
from ase_wavecalc.npz_import import import_npz
from ase_wavecalc.integrals import make_mol
from ase_wavecalc.units import BOHR, HARTREE, HARTREE_PER_BOHR

# the npz parts committed with the repository (data/, the same files as shared/data)
WATER_PARTS = sorted((Path(__file__).resolve().parents[1] / "data" / "water_pbe_def2svp").glob("part-*.npz"))
NUMBERS = np.array([8, 1, 1])


def _arrays(rng, n_atoms=3, nao=7):
    a = rng.normal(size=(nao, nao))
    return {"fock": a + a.T, "overlap": np.eye(nao) + 0.01 * (a @ a.T), "hcore": a - a.T + 2 * np.eye(nao),
            "e_tot": np.asarray(rng.normal()), "gradient": rng.normal(size=(n_atoms, 3)),
            "mo_energy": np.sort(rng.normal(size=nao)), "dipole": rng.normal(size=3)}


def _positions(rng, n_atoms=3):
    return rng.normal(scale=1.5, size=(n_atoms, 3))


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.db"
    db = connect(path, create=True)
    written = {}
    for frame in (3, 0, 7, 1):  # out of order: read_dataset sorts by frame
        written[frame] = (_positions(rng), _arrays(rng))
        write_frame(db, frame, NUMBERS, *written[frame], source="test")
    write_frame(db, 5, NUMBERS, _positions(rng), converged=False, error="SCF not converged")
    update_metadata(db, {"method": "rks", "xc": "pbe", "basis": "sto-3g"})

    d = read_dataset(path)
    assert list(d["frame"]) == [0, 1, 3, 7]  # frame 5 failed: excluded
    assert d["numbers"].tolist() == NUMBERS.tolist()
    assert d["fock"].shape == (4, 7, 7) and d["e_tot"].shape == (4,) and d["gradient"].shape == (4, 3, 3)
    for i, frame in enumerate(d["frame"]):
        pos, arrays = written[frame]
        np.testing.assert_allclose(d["positions_bohr"][i], pos, rtol=1e-15, atol=1e-15)
        for key in FRAME_KEYS:
            np.testing.assert_array_equal(d[key][i], arrays[key])
    assert metadata(path)["basis"] == "sto-3g"
    assert frame_ids(db) == {0, 1, 3, 5, 7} and frame_ids(db, converged=False) == {5}

    # the ASE side: Angstrom, eV, eV/Angstrom, e*Angstrom
    row = next(db.select(frame=3))
    pos, arrays = written[3]
    np.testing.assert_allclose(row.positions, pos * BOHR)
    assert row.energy == pytest.approx(float(arrays["e_tot"]) * HARTREE, rel=1e-14)
    np.testing.assert_allclose(row.forces, -arrays["gradient"] * HARTREE_PER_BOHR)
    np.testing.assert_allclose(row.dipole, arrays["dipole"] * BOHR)
    assert row.converged and row.source == "test"

    only = read_dataset(path, keys=("e_tot",))
    assert set(only) == {"numbers", "frame", "positions_bohr", "e_tot"}


def test_duplicate_frame_refused(tmp_path):
    rng = np.random.default_rng(1)
    db = connect(tmp_path / "d.db", create=True)
    write_frame(db, 0, NUMBERS, _positions(rng), _arrays(rng))
    with pytest.raises(DatasetError, match="already"):
        write_frame(db, 0, NUMBERS, _positions(rng), _arrays(rng))
    assert len(db) == 1


def test_transaction_holds_whole_batches(tmp_path):
    """A batch that fails half-way leaves nothing behind (what a kill -9 inside `with db:` does)."""
    rng = np.random.default_rng(2)
    db = connect(tmp_path / "d.db", create=True)
    with pytest.raises(RuntimeError):
        with db:
            write_frame(db, 0, NUMBERS, _positions(rng), _arrays(rng))
            write_frame(db, 1, NUMBERS, _positions(rng), _arrays(rng))
            raise RuntimeError("killed")
    assert len(db) == 0


def test_converged_frame_needs_all_arrays(tmp_path):
    rng = np.random.default_rng(3)
    db = connect(tmp_path / "d.db", create=True)
    arrays = _arrays(rng)
    del arrays["hcore"]
    with pytest.raises(DatasetError, match="hcore"):
        write_frame(db, 0, NUMBERS, _positions(rng), arrays)
    bad = _arrays(rng)
    bad["gradient"] = bad["gradient"][:2]
    with pytest.raises(DatasetError, match="shape"):
        write_frame(db, 0, NUMBERS, _positions(rng), bad)


def test_mixed_compositions_refused(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "d.db"
    db = connect(path, create=True)
    write_frame(db, 0, NUMBERS, _positions(rng), _arrays(rng))
    write_frame(db, 1, [1, 8, 1], _positions(rng), _arrays(rng))  # same formula, other atom order
    with pytest.raises(DatasetError, match="mixes compositions"):
        read_dataset(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()  # reading never creates a file
    with pytest.raises(FileNotFoundError):
        metadata(tmp_path / "missing.db")

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatasetError, match="not an SQLite database"):
        read_dataset(garbage)

    rng = np.random.default_rng(5)
    good = tmp_path / "good.db"
    db = connect(good, create=True)
    with db:
        for frame in range(30):
            write_frame(db, frame, NUMBERS, _positions(rng), _arrays(rng, nao=40))
    raw = good.read_bytes()
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(raw[: len(raw) // 3])
    with pytest.raises(DatasetError):
        read_dataset(truncated)
    scrambled = tmp_path / "scrambled.db"
    scrambled.write_bytes(raw[:4096] + bytes(np.random.default_rng(0).integers(0, 256, len(raw) - 4096,
                                                                               dtype=np.uint8)))
    with pytest.raises(DatasetError):
        read_dataset(scrambled)

    empty = tmp_path / "empty.db"
    connect(empty, create=True)
    with pytest.raises(DatasetError, match="no converged frames"):
        read_dataset(empty)
    with pytest.raises(DatasetError, match=r"\.db"):
        connect(tmp_path / "x.sqlite", create=True)


def test_metadata_conflicts_refused(tmp_path):
    db = connect(tmp_path / "d.db", create=True)
    update_metadata(db, {"method": "rks", "xc": "pbe", "basis": "def2-svp", "conv_tol": 1e-11})
    update_metadata(db, {"basis": "DEF2-SVP", "conv_tol": 1e-11, "note": "ok"})  # same settings
    with pytest.raises(DatasetError, match="basis"):
        update_metadata(db, {"basis": "sto-3g"})
    assert db.metadata["note"] == "ok" and db.metadata["basis"] == "def2-svp"


def test_candidates_store_and_grow(tmp_path):
    rng = np.random.default_rng(6)
    db = connect(tmp_path / "d.db", create=True)
    assert read_candidates(db) is None
    pos = rng.normal(size=(5, 3, 3))
    write_candidates(db, NUMBERS, pos[:3], info={"sampler": {"n_frames": 3}})
    write_candidates(db, NUMBERS, pos[:3])  # identical: nothing to do
    write_candidates(db, NUMBERS, pos, info={"sampler": {"n_frames": 5}})  # same trajectory, longer
    numbers, stored = read_candidates(db)
    assert numbers.tolist() == NUMBERS.tolist()
    np.testing.assert_array_equal(stored, pos)
    assert db.metadata["sampler"]["n_frames"] == 5
    with pytest.raises(DatasetError, match="different candidate"):
        write_candidates(db, NUMBERS, pos + 0.1)


def test_import_npz_resumes_and_matches_pyscf(tmp_path):
    assert len(WATER_PARTS) >= 2, "data/water_pbe_def2svp/part-*.npz missing from the checkout"
    out = tmp_path / "water.db"
    s = import_npz(out, WATER_PARTS[:1], max_frames=3, progress=False)
    assert s["written"] == 3
    s = import_npz(out, WATER_PARTS[:2], max_frames=4, progress=False)  # resume + a second part
    assert s["written"] == 5 and s["skipped"] == 3
    assert cli.main(["import-npz", str(out), str(WATER_PARTS[0]), "--max-frames", "4", "--quiet"]) == 0

    d = read_dataset(out)
    assert list(d["frame"]) == list(range(8))
    db = connect(out)
    origin = sorted((r.source, r.source_index) for r in db.select(include_data=False))
    assert len(set(origin)) == 8 and origin[0] == ("water_pbe_def2svp/part-000.npz", 0)

    npz = np.load(WATER_PARTS[1])
    row = next(db.select(source="water_pbe_def2svp/part-001.npz", source_index=2))
    i = int(np.nonzero(d["frame"] == row.frame)[0][0])
    np.testing.assert_array_equal(d["fock"][i], npz["fock"][2])
    np.testing.assert_array_equal(d["gradient"][i], npz["gradient"][2])
    np.testing.assert_array_equal(d["dipole"][i], npz["dipole_au"][2])
    np.testing.assert_allclose(row.positions, npz["positions"][2], atol=1e-9)
    mol = make_mol(d["numbers"], d["positions_bohr"][i], "def2-svp")
    np.testing.assert_allclose(d["overlap"][i], mol.intor("int1e_ovlp"), atol=1e-13)
    np.testing.assert_allclose(d["hcore"][i], mol.intor("int1e_kin") + mol.intor("int1e_nuc"), atol=1e-11)
    for f, s_, e in zip(d["fock"], d["overlap"], d["mo_energy"]):
        assert np.abs(scipy.linalg.eigh(f, s_, eigvals_only=True) - e).max() < 2e-6
    md = metadata(out)
    assert (md["method"], md["xc"], md["basis"], md["grid_level"]) == ("rks", "pbe", "def2-svp", 3)
    assert set(md["sources"]) == {"water_pbe_def2svp/part-000.npz", "water_pbe_def2svp/part-001.npz"}


def test_import_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        import_npz(tmp_path / "x.db", [tmp_path / "missing.npz"], progress=False)
    assert cli.main(["import-npz", str(tmp_path / "x.db"), str(tmp_path / "missing.npz"), "--quiet"]) == 2
    gen = tmp_path / "gen.db"  # a generate dataset owns its frame ids: no imports into it
    write_candidates(connect(gen, create=True), NUMBERS, np.zeros((2, 3, 3)))
    with pytest.raises(DatasetError, match="generate"):
        import_npz(gen, WATER_PARTS[:1], max_frames=1, progress=False)


def test_export_npz_round_trip_keeps_frames_and_ids(tmp_path):
    """`wavecalc export-npz` then `import-npz` gives back every array and the frame ids, gaps included (the
    ids of a `generate` file are candidate indices, and splits are computed from them)."""
    from ase_wavecalc.npz_export import export_npz

    src = tmp_path / "src.db"
    import_npz(src, WATER_PARTS[:1], max_frames=6, progress=False)
    db = connect(src)
    gone = [r.id for r in db.select(include_data=False) if r.frame in (1, 4)]
    db.delete(gone)                                  # ids 0, 2, 3, 5 remain
    update_metadata(db, {"sampler": {"temperature_K": 700.0, "seed": 7, "driver": "GFN2-xTB"}})
    before = read_dataset(src)
    parts = export_npz(src, tmp_path / "parts", part_size=3, progress=False)
    assert [p.name for p in parts] == ["part-000.npz", "part-001.npz"]
    with np.load(parts[0]) as npz:
        assert npz["fock"].dtype == np.float64 and list(npz["frame"]) == [0, 2, 3]
        assert float(npz["temperature_K"]) == 700.0 and int(npz["seed"]) == 7
    back = tmp_path / "back.db"
    assert cli.main(["import-npz", str(back), *map(str, parts), "--quiet"]) == 0
    after = read_dataset(back)
    assert list(after["frame"]) == [0, 2, 3, 5]
    for key in ("fock", "overlap", "e_tot", "gradient", "mo_energy", "dipole"):
        np.testing.assert_array_equal(after[key], before[key])
    np.testing.assert_allclose(after["positions_bohr"], before["positions_bohr"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(after["hcore"], before["hcore"], atol=1e-10)
    assert metadata(back)["sampler"]["seed"] == 7
    # no mixing of exports, and kept ids never collide with frames already in a file
    with pytest.raises(DatasetError, match="not empty"):
        export_npz(src, tmp_path / "parts", progress=False)
    with pytest.raises(DatasetError, match="already frames"):
        import_npz(src, parts[:1], progress=False)
    assert cli.main(["export-npz", str(src), str(tmp_path / "parts"), "--quiet"]) == 2


def test_compact_npz_parts_keep_f_symmetric_and_to_float32_precision(tmp_path):
    """`export-npz --compact`: F once per symmetric pair in float32 comes back symmetric, within float32's
    relative precision of the float64 original, at a fraction of the size; energies and forces exactly."""
    from ase_wavecalc.npz_export import export_npz

    src = tmp_path / "src.db"
    import_npz(src, WATER_PARTS[:1], max_frames=8, progress=False)
    before = read_dataset(src)
    full = export_npz(src, tmp_path / "full", progress=False)
    assert cli.main(["export-npz", str(src), str(tmp_path / "compact"), "--compact", "--quiet"]) == 0
    compact = sorted((tmp_path / "compact").glob("part-*.npz"))
    with np.load(compact[0]) as npz:
        assert "fock" not in npz.files and npz["fock_triu"].dtype == np.float32
    assert compact[0].stat().st_size < 0.6 * full[0].stat().st_size
    back = tmp_path / "back.db"
    assert cli.main(["import-npz", str(back), *map(str, compact), "--quiet"]) == 0
    after = read_dataset(back)
    np.testing.assert_array_equal(after["fock"], np.swapaxes(after["fock"], -1, -2))
    scale = np.abs(before["fock"]).max()
    np.testing.assert_allclose(after["fock"], before["fock"], rtol=0, atol=scale * 2.0 ** -23)
    np.testing.assert_allclose(after["mo_energy"], before["mo_energy"], rtol=2.0 ** -23, atol=1e-12)
    for key in ("e_tot", "gradient", "dipole"):     # float64 copies
        np.testing.assert_array_equal(after[key], before[key])
    np.testing.assert_allclose(after["overlap"], before["overlap"], rtol=0, atol=1e-12)   # recomputed by PySCF


def test_export_npz_round_trip_of_a_charged_hf_dataset(tmp_path):
    """An RHF dataset of a cation, as `wavecalc generate --charge 1` records it (the charge in the sampler
    record, grid_level None): training reads its charge, and export + import keep method, grid and charge
    (the import builds the cation's PySCF molecule: H3O+ is an open shell at charge 0)."""
    from ase_wavecalc.npz_export import export_npz
    from ase_wavecalc.reference import reference_settings, run_reference
    from ase_wavecalc.train.data import load_table

    numbers = np.array([8, 1, 1, 1])
    h3o = np.array([[0.0, 0.0, 0.12], [0.0, 1.78, -0.55], [1.54, -0.89, -0.55], [-1.54, -0.89, -0.55]])
    src = tmp_path / "src.db"
    db = connect(src, create=True)
    update_metadata(db, {**reference_settings("hf", "sto-3g", conv_tol=1e-9),
                         "sampler": {"source": "h3o.xyz", "mode": "file", "n_frames": 2, "charge": 1}})
    for i in range(2):
        pos = h3o + 0.05 * i
        write_frame(db, 3 * i, numbers, pos, run_reference(numbers, pos * BOHR, method="hf", basis="sto-3g",
                                                          conv_tol=1e-9, charge=1))
    assert load_table(src, sha256=False).charge == 1
    parts = export_npz(src, tmp_path / "parts", progress=False)
    back = tmp_path / "back.db"
    import_npz(back, parts, progress=False)
    meta = metadata(back)
    assert (meta["method"], meta["xc"], meta["grid_level"], meta["charge"]) == ("rhf", "hf", None, 1)
    assert meta["conv_tol_grad"] == metadata(src)["conv_tol_grad"]
    assert load_table(back, sha256=False).charge == 1
    before, after = read_dataset(src), read_dataset(back)
    assert list(after["frame"]) == [0, 3]
    np.testing.assert_allclose(after["hcore"], before["hcore"], atol=1e-10)
    np.testing.assert_array_equal(after["fock"], before["fock"])
    neutral = tmp_path / "neutral.db"   # frames of another charge do not go into the same file
    import_npz(neutral, WATER_PARTS[:1], max_frames=1, progress=False)
    with pytest.raises(DatasetError, match="charge"):
        import_npz(neutral, parts, progress=False)
