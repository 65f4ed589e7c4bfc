"""`wavecalc fit`: bad input refused before any work, the recipe, the candidate order, and the whole pipeline
end to end on a tiny case (water, HF/STO-3G, a tiny network) with SIGKILL at random moments and resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ase_wavecalc.cli import main as wavecalc
from ase_wavecalc.fit.cli_fit import parse_budget
from ase_wavecalc.fit.recipe import RecipeError, load_recipe

TINY = Path(__file__).parent / "data" / "fit_tiny_recipe.toml"


def test_budget_strings():
    assert parse_budget("2h") == 7200
    assert parse_budget("90m") == 5400
    assert parse_budget("3h30m") == 3 * 3600 + 1800
    assert parse_budget("1.5") == 5400
    with pytest.raises(ValueError, match="budget"):
        parse_budget("two hours")


def test_recipe_merges_and_refuses_typos(tmp_path):
    recipe, _ = load_recipe(TINY)
    assert recipe["committee"]["size"] == 2                      # from the user recipe
    default, _ = load_recipe(None)
    assert recipe["labels"] == default["labels"]                 # from the default
    bad = tmp_path / "bad.toml"
    bad.write_text("[sampling]\ntemperatrues = [300.0]\n")
    with pytest.raises(RecipeError, match="temperatrues.*temperatures"):
        load_recipe(bad)
    bad.write_text("[budget]\nphase_end = { sample = 0.5, label = 0.4, fock = 0.6, readout = 0.7, active = 0.8, final = 1.0 }\n")
    with pytest.raises(RecipeError, match="increase"):
        load_recipe(bad)


def test_final_phase_keeps_only_its_reserve_of_a_long_budget():
    """The phases end at their budget shares, except that the one before "final" runs on until only
    final.reserve_min is left: a long budget's final 10 % would mostly sit idle."""
    from ase_wavecalc.fit.recipe import PHASES, phase_deadlines

    recipe, _ = load_recipe(None)
    ends, reserve = recipe["budget"]["phase_end"], 60.0 * recipe["final"]["reserve_min"]
    for hours in (0.5, 2.0, 5.0, 8.0):
        budget = 3600.0 * hours
        got = phase_deadlines(recipe, budget)
        assert got["final"] == budget and list(got) == list(PHASES)
        assert got["active"] == max(ends["active"] * budget, budget - reserve)
        assert all(got[p] == ends[p] * budget for p in PHASES if p not in ("active", "final"))
        assert all(a < b for a, b in zip(list(got.values()), list(got.values())[1:]))
    assert phase_deadlines(recipe, 5 * 3600.0)["active"] == 5 * 3600.0 - reserve > ends["active"] * 5 * 3600.0
    del recipe["final"]["reserve_min"]          # a fit started before the key existed keeps its shares
    assert phase_deadlines(recipe, 5 * 3600.0)["active"] == ends["active"] * 5 * 3600.0


def test_farthest_point_order_spreads_the_first_frames():
    from ase_wavecalc.fit.candidates import _descriptor, farthest_point_order

    rng = np.random.default_rng(1)
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    frames = base + rng.normal(scale=0.05, size=(60, 3, 3))
    order = farthest_point_order(frames)
    assert sorted(order.tolist()) == list(range(60))
    x = _descriptor(frames)
    # each chosen frame is the farthest from those before it
    for k in range(1, 10):
        d = np.min(np.linalg.norm(x[:, None] - x[order[:k]][None], axis=-1), axis=1)
        d[order[:k]] = -1
        assert np.isclose(d[order[k]], d.max())


def test_interleaved_order_gives_every_source_its_share_spread_within_it():
    """The first k frames of the order hold each source's share of the pool (to one frame), and within a source
    the frames come in that source's own farthest-point order: hot or distorted outliers do not crowd out
    the 300 K frames at the head of the labelling queue."""
    from ase_wavecalc.fit.candidates import farthest_point_order, interleaved_order

    rng = np.random.default_rng(2)
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    scales = {"md300": 0.02, "md700": 0.08, "normal_modes": 0.15}
    counts = {"md300": 50, "md700": 40, "normal_modes": 10}
    frames = np.concatenate([base + rng.normal(scale=scales[k], size=(n, 3, 3)) for k, n in counts.items()])
    sources = np.concatenate([[k] * n for k, n in counts.items()])
    assert sum(sources[farthest_point_order(frames)[:20]] == "md300") <= 2      # the global order: outliers first
    order = interleaved_order(frames, sources)
    assert sorted(order.tolist()) == list(range(100))
    for k in (10, 20, 37, 100):
        for name, n in counts.items():
            assert abs(np.sum(sources[order[:k]] == name) - k * n / 100) <= 1
    for name in counts:
        ids = np.flatnonzero(sources == name)
        mine = [i for i in order if sources[i] == name]
        assert mine == ids[farthest_point_order(frames[ids])].tolist()


def test_normal_mode_samples_keep_the_bonds_of_the_minimum():
    """A displacement that breaks a bond or stretches one beyond 1.25x is redrawn: the check itself, and the
    samples of ethanol (a soft methyl and hydroxyl torsion) at 700 K."""
    from ase.build import molecule

    from ase_wavecalc.fit.candidates import keeps_bonds, normal_mode_samples, relax

    start = molecule("CH3CH2OH")
    x0 = start.positions
    moved = x0.copy()
    h = [i for i, z in enumerate(start.numbers) if z == 1][0]
    c = int(np.argmin(np.linalg.norm(x0[:h] - x0[h], axis=1)))      # the heavy atom the hydrogen sits on
    for factor, kept in ((1.2, True), (1.3, False), (2.5, False)):
        moved[h] = x0[c] + factor * (x0[h] - x0[c])
        assert keeps_bonds(start.numbers, x0, moved) is kept
    cc = np.array([[0.0, 0.0, 0.0], [1.52, 0.0, 0.0]])                 # still bonded at 1.28x (below 1.98 A)
    assert keeps_bonds([6, 6], cc, cc * 1.2) and not keeps_bonds([6, 6], cc, cc * 1.28)
    pytest.importorskip("tblite")
    minimum, _ = relax(start)
    samples = normal_mode_samples(minimum, 12, [700.0], np.random.default_rng(0))
    assert samples.shape == (12, 9, 3)
    assert all(keeps_bonds(minimum.numbers, minimum.positions, x) for x in samples)
    assert np.abs(samples - minimum.positions).max() > 0.05          # displaced, not the minimum itself


def test_md_runs_start_half_from_the_lowest_conformer_and_the_rest_in_turn():
    from ase_wavecalc.fit.candidates import md_start

    minima = ["low", "b", "c"]
    assert [md_start(minima, j, 6) for j in range(6)] == ["low", "low", "low", "b", "c", "b"]
    assert [md_start(["low"], j, 6) for j in range(6)] == ["low"] * 6


def test_conformer_search_finds_the_low_minima_of_the_same_molecule(monkeypatch):
    """Glycine has other minima within 0.25 eV (GFN2-xTB); malondialdehyde's SMILES embeds with its OH turned
    away from the other oxygen, above the hydrogen-bonded minimum, which the search must find and put first.
    Every minimum has the start's bonds; none is a relabelled copy of another. Without RDKit: the start alone."""
    pytest.importorskip("rdkit")
    pytest.importorskip("tblite")
    from ase_wavecalc.domain import bond_signature
    from ase_wavecalc.fit import conformers
    from ase_wavecalc.fit.candidates import relax
    from ase_wavecalc.fit.molecule import resolve_molecule

    start, _ = relax(resolve_molecule("NCC(=O)O"))
    minima = conformers.low_conformers(start, n_embed=4)
    energies = [m.info["energy_eV"] for m in minima]
    assert len(minima) >= 2 and energies == sorted(energies) and energies[0] == 0.0 and max(energies) <= 0.25
    assert sum(m.info["is_start"] for m in minima) == 1
    assert {bond_signature(m.numbers, m.positions) for m in minima} == {bond_signature(start.numbers, start.positions)}
    prints = [conformers._fingerprint(m.numbers, m.positions) for m in minima]
    assert min(np.sqrt(np.mean((a - b) ** 2)) for i, a in enumerate(prints) for b in prints[:i]) > conformers.SAME

    start, _ = relax(resolve_molecule("O/C=C\\C=O"))
    lowest = conformers.low_conformers(start, n_embed=4)[0]
    z, x = lowest.numbers, lowest.positions
    oxygens = np.flatnonzero(z == 8)
    d = np.linalg.norm(x[:, None] - x[oxygens][None], axis=-1)[z == 1]     # H-O distances
    hydroxyl = np.argmin(d.min(axis=1))
    assert not lowest.info["is_start"] and d[hydroxyl].max() < 2.0            # O-H...O: the hydrogen bond

    monkeypatch.setattr(conformers, "_rdkit_molecule", lambda atoms, charge: None)
    alone = conformers.low_conformers(start)
    assert len(alone) == 1 and alone[0].info["is_start"] and np.allclose(alone[0].positions, start.positions)


@pytest.mark.parametrize("argv, message", [
    (["Au2", "--basis", "sto-3g"], "Au"),                         # an element the basis does not have
    (["CH3"], "open shell"),                                      # a radical
    (["H2O", "--budget", "1m"], "minimum is"),                    # below the recipe's floor
    (["nonexistent.xyz"], "does not exist"),
    (["C1CC(", "--budget", "2h"], "RDKit"),                       # unparseable SMILES, or RDKit not installed
    (["H2O", "--method", "nosuchfunctional"], "nosuchfunctional"),
    (["H2O", "--budget", "soon"], "budget"),
    ([], "required: MOLECULE"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "model"
    if argv and argv[0] == "Au2":
        from ase import Atoms
        Atoms("Au2", positions=[[0, 0, 0], [0, 0, 2.5]]).write(tmp_path / "au2.xyz")
        argv = [str(tmp_path / "au2.xyz")] + argv[1:]
    code = wavecalc(["fit", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1               # one line, naming the problem
    assert not out.exists() and not out.with_name("model.work").exists()


def test_a_lone_atom_name_is_read_as_smiles(monkeypatch):
    """ASE names come before SMILES ("CO" is carbon monoxide), but a name that builds one atom cannot be fitted:
    "C" is methane's SMILES. Without RDKit the lone atom is refused, naming what is missing."""
    from ase import Atoms

    from ase_wavecalc.fit import molecule as mol

    methane = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63],
                                      [0.63, -0.63, -0.63]])
    monkeypatch.setattr(mol, "_from_smiles", lambda spec: methane.copy())
    atoms = mol.resolve_molecule("C")
    assert atoms.get_chemical_formula() == "CH4" and atoms.info["resolved_from"] == "SMILES"
    co = mol.resolve_molecule("CO")
    assert co.get_chemical_formula() == "CO" and co.info["resolved_from"] == "ASE collection name"

    def no_rdkit(spec):
        raise mol.FitInputError("RDKit is not installed")
    monkeypatch.setattr(mol, "_from_smiles", no_rdkit)
    atoms = mol.resolve_molecule("C")
    assert len(atoms) == 1
    with pytest.raises(mol.FitInputError, match="at least 2 atoms.*RDKit"):
        mol.check_molecule(atoms, "def2-svp", 0, "pbe")


def test_a_geometry_whose_reference_fails_is_stored_as_failed_not_raised(monkeypatch):
    """A labeller meeting a frame whose reference raises (not an SCF that did not converge: a linear-algebra
    error of an extreme geometry) records it as failed and goes on; raised, it would stop labelling, and each
    restart would meet the same frame first. A failing model guess falls back to PySCF's."""
    from ase_wavecalc import generate
    from ase_wavecalc.fit.labelling import _label_one

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("singular overlap")
    monkeypatch.setattr(generate, "run_reference", broken)
    outcome = _label_one(3, np.array([8, 1, 1]), np.zeros((3, 3)), {"basis": "sto-3g", "charge": 0}, None)
    assert outcome[0] == 3 and outcome[1] == "not_converged" and "LinAlgError" in outcome[2]

    class BrokenGuess:
        def density(self, *args):
            raise RuntimeError("checkpoint half written")
    calls = []
    monkeypatch.setattr(generate, "run_reference", lambda *a, dm0=None, **k: calls.append(dm0) or {"info": {}})
    outcome = _label_one(4, np.array([8, 1, 1]), np.zeros((3, 3)), {"basis": "sto-3g", "charge": 0}, BrokenGuess())
    assert outcome[1] == "ok" and calls == [None]


def test_print_recipe_needs_no_molecule(capsys):
    assert wavecalc(["fit", "--print-recipe"]) == 0
    assert "[fock]" in capsys.readouterr().out


def _labelled(workdir: Path) -> dict:
    from ase_wavecalc.dataset import connect

    out = {}
    for db in sorted(workdir.glob("*.db")):
        rows = [r.frame for r in connect(db).select(include_data=False)]
        assert len(rows) == len(set(rows)), f"{db.name}: a frame labelled twice"
        out[db.name] = set(rows)
    return out


def _fit_cmd(workdir, out, budget, data=None):
    return [sys.executable, "-m", "ase_wavecalc.cli", "fit", "H2O", "--method", "hf", "--basis", "sto-3g",
            "--budget", budget, "--recipe", str(TINY), "--out", str(out), "--workdir", str(workdir),
            "--name", "water-sto3g"] + (["--data", str(data)] if data else [])


def _user_frames(folder: Path, n: int = 6) -> Path:
    """``n`` water frames labelled with RHF/STO-3G as a user would bring them: npz parts in ``folder``."""
    from ase.build import molecule

    from ase_wavecalc import dataset
    from ase_wavecalc.npz_export import export_npz
    from ase_wavecalc.reference import reference_settings, run_reference
    from ase_wavecalc.units import angstrom_to_bohr

    rng = np.random.default_rng(1)
    db = dataset.connect(folder.with_suffix(".db"), create=True)
    dataset.update_metadata(db, reference_settings("hf", "sto-3g", conv_tol=1e-10))
    atoms = molecule("H2O")
    for k in range(n):
        x = atoms.positions + rng.normal(scale=0.05, size=atoms.positions.shape)
        ref = run_reference(atoms.numbers, x, method="hf", basis="sto-3g", conv_tol=1e-10)
        dataset.write_frame(db, k, atoms.numbers, angstrom_to_bohr(x), ref)
    export_npz(folder.with_suffix(".db"), folder, progress=False, compact=True)
    return folder


def test_user_data_is_checked_before_any_work(tmp_path, capsys):
    """--data: frames of another molecule, level of theory or charge are refused in one line, before any
    sampling; a folder of npz parts or a dataset file of this molecule is accepted and imported whole."""
    from ase_wavecalc.fit.user_data import check_user_data, import_user_data

    root = Path(__file__).resolve().parents[1] / "data"
    cases = [(["H2O", "--data", str(root / "ethanol_pbe_def2svp")], "C2H6O frames; the molecule is H2O"),
             (["H2O", "--method", "hf", "--data", str(root / "water_pbe_def2svp")], "method"),
             (["H2O", "--charge", "2", "--basis", "sto-3g", "--method", "hf", "--data", str(tmp_path / "mine")],
              "charge"),
             (["H2O", "--data", str(tmp_path / "nothing.db")], "does not exist"),
             (["H2O", "--data", str(tmp_path)], "without npz parts")]
    folder = _user_frames(tmp_path / "mine")
    for argv, message in cases:
        out = tmp_path / "model"
        assert wavecalc(["fit", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (argv, err)
        assert not out.exists() and not out.with_name("model.work").exists()
    from ase.build import molecule
    numbers = molecule("H2O").numbers
    for source in (folder, folder.with_suffix(".db")):
        assert check_user_data(source, numbers, "hf", "sto-3g", 0) == 6
        target = tmp_path / f"user_{source.suffix or 'npz'}.db"
        assert import_user_data(source, target) == 6


def test_fit_end_to_end_with_sigkill_and_resume(tmp_path):
    """The whole pipeline on water/STO-3G (epoch limits, a budget that is not binding), killed twice (SIGKILL) at random moments; the
    same command resumes, the second time from a packed copy in another work directory. No labelled frame is
    lost or labelled twice, the budget is honoured over all invocations, and the model works through
    WaveCalculator against PySCF computed here."""
    workdir, out = tmp_path / "work", tmp_path / "water-fit"
    data = _user_frames(tmp_path / "user-frames")          # --data: frames the user labelled before
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(int(time.time()))     # random moments; what must hold holds for every moment
    history = []
    for kill_after in (rng.uniform(0, 15), rng.uniform(3, 30)):
        p = subprocess.Popen(_fit_cmd(workdir, out, "10m", data), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        t0 = time.monotonic()                     # (the random moment counts from the fit's start, not from
        while not (workdir / "fit.json").exists() and time.monotonic() - t0 < 120:   # python's)
            time.sleep(0.2)
        time.sleep(kill_after)
        p.send_signal(signal.SIGKILL)
        p.wait()
        time.sleep(1.0)       # labellers die with their parent (PR_SET_PDEATHSIG)
        history.append(_labelled(workdir))
    # the killed fit packed (as a session's end commits it), unpacked elsewhere, and finished from there
    packed = tmp_path / "packed"
    assert subprocess.run(_fit_cmd(workdir, out, "10m", data) + ["--pack", str(packed)], env=env).returncode == 0
    assert not list(packed.rglob("checkpoint.pt")) and not list(packed.rglob("*.db"))   # weights and npz only
    workdir = tmp_path / "work2"
    done = subprocess.run(_fit_cmd(workdir, out, "10m", data) + ["--unpack", str(packed)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    final = _labelled(workdir)
    for before in history:                        # nothing labelled before a kill is lost
        for name, frames in before.items():
            assert frames <= final[name]
    state = json.loads((workdir / "fit.json").read_text())
    assert state["invocations"] >= 2        # (a kill before the state file exists is no invocation)
    assert state["elapsed_s"] < 600                   # the fit's clock over all invocations (the epoch limits of
                                                      # the test recipe end the phases long before their deadlines)
    assert all(state["phases"][p] == "done" for p in ("sample", "label", "fock", "readout", "active", "final"))
    # the report's phase times cover every invocation: together they are the fit's clock
    assert abs(sum(state["phase_seconds"].values()) - state["elapsed_s"]) < 5.0

    card = json.loads((out / "model.json").read_text())
    assert card["test_metrics"]["via"] == "WaveCalculator" and card["test_metrics"]["n_frames"] > 0
    assert card["name"] == "water-sto3g"                # --name, not the folder's name
    groups = card["test_metrics"]["by_group"]           # one row per test trajectory's temperature
    assert set(groups) == {"md300", "md500"}
    assert sum(g["n_frames"] for g in groups.values()) == card["test_metrics"]["n_frames"]
    assert "MD at 500 K" in (out / "report.md").read_text()
    assert "recipe" in card["fit"] and card["fit"]["command"].startswith("wavecalc fit H2O")
    assert card["fit"]["labelled_frames"]["user.db"] == 6              # the user's frames, trained on
    readout = json.loads((workdir / "runs" / "readout" / "split.json").read_text())
    assert any(Path(d["path"]).name == "user.db" and d["train"] for d in readout["datasets"])
    assert (out / "report.md").is_file()
    for part in ("pool", "test"):
        assert list((workdir / "data" / part).glob("part-*.npz"))

    # the model against PySCF at its level of theory, on a held-out geometry computed here
    from ase.build import molecule
    from ase_wavecalc import WaveCalculator

    atoms = molecule("H2O")
    atoms.positions[0] += [0.02, -0.01, 0.03]
    atoms.calc = WaveCalculator(model=str(out))
    e_model, f_model = atoms.get_potential_energy(), atoms.get_forces()
    ref = atoms.copy()
    ref.calc = WaveCalculator(method="hf", basis="sto-3g")
    assert abs(e_model - ref.get_potential_energy()) < 0.05            # eV: a trained model, not a guess
    assert np.abs(f_model - ref.get_forces()).max() < 0.5              # eV/A


def test_fit_honours_a_short_budget(tmp_path):
    """With a budget shorter than the recipe's epochs need, the phases end at their deadlines: the fit's clock
    stays near the budget and a usable model comes out."""
    workdir, out = tmp_path / "work", tmp_path / "water-fit"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(TINY.read_text().replace("max_epochs = 40", "max_epochs = 100000")
                      .replace("max_epochs = 60", "max_epochs = 100000"))
    cmd = _fit_cmd(workdir, out, "60s")
    cmd[cmd.index("--recipe") + 1] = str(recipe)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    state = json.loads((workdir / "fit.json").read_text())
    # the deadlines bound every phase but the last one's fixed work (export, test, MD, timing: ~10 s here)
    assert state["elapsed_s"] <= 60 * 1.5 + 30
    assert json.loads((out / "model.json").read_text())["test_metrics"]["n_frames"] > 0
