"""The `wavecalc` command line itself: version, help (defaults shown), and what a mistake in the input gives
(one line on stderr, exit status 2, no file left behind or changed)."""
import argparse
import subprocess
import sys

import pytest

from ase_wavecalc import __version__, cli
from ase_wavecalc.dataset import connect, update_metadata
from ase_wavecalc.reference import reference_settings


def _one_error_line(capsys, command):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wavecalc {command}: error: "), err
    return lines[0]


def test_version_and_top_level_help():
    run = subprocess.run([sys.executable, "-m", "ase_wavecalc.cli", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"wavecalc {__version__}"
    text = cli.build_parser().format_help()
    assert cli.DESCRIPTION.split()[0] in text and "one sub-command per job" not in text
    assert all(name in text for name in cli.SUBCOMMANDS)


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_every_option_with_a_default_shows_it_in_help(command):
    parser = cli.build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    if sub.get_default("_import_error") is not None:
        pytest.skip(f"{command}: optional dependency missing")
    formatter = sub._get_formatter()
    for action in sub._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS) or not action.help:
            continue
        shown = formatter._expand_help(action)
        assert "default" in shown.lower(), (command, action.option_strings, shown)


def test_generate_refuses_bad_input_before_creating_the_file(tmp_path, capsys):
    """A missing structure, --n-frames 0, a missing --geometries file: one line, status 2, no .db."""
    out = tmp_path / "y.db"
    cases = [(["generate", str(tmp_path / "nonexist.xyz")], "neither an existing file"),
             (["generate", "H2O", "--n-frames", "0"], "n_frames"),
             (["generate", "H2O", "--temperature", "-5"], "temperature"),
             (["generate", str(tmp_path / "nonexist.xyz"), "--geometries"], "no such file")]
    for args, words in cases:
        assert cli.main(args + ["--out", str(out), "--quiet"]) == 2
        assert words in _one_error_line(capsys, "generate")
        assert not out.exists()


def test_generate_refuses_another_basis_than_the_files(tmp_path, capsys):
    out = tmp_path / "water.db"
    update_metadata(connect(out, create=True), reference_settings("hf", "sto-3g", conv_tol=1e-9))
    before = out.read_bytes()
    assert cli.main(["generate", "H2O", "--out", str(out), "--method", "hf", "--basis", "def2-svp",
                     "--quiet"]) == 2
    line = _one_error_line(capsys, "generate")
    assert "basis" in line and "sto-3g" in line and "def2-svp" in line
    assert out.read_bytes() == before


def test_generate_removes_the_file_it_created_when_sampling_fails(tmp_path, monkeypatch):
    from ase_wavecalc import sampling
    from ase_wavecalc.generate import generate

    def fail(*args, **kwargs):
        raise RuntimeError("the MD driver failed")

    monkeypatch.setattr(sampling, "sample_geometries", fail)
    with pytest.raises(RuntimeError, match="MD driver"):
        generate("H2O", tmp_path / "new.db", method="hf", basis="sto-3g", n_frames=2, progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["md", "ir"])
def test_md_and_ir_report_a_missing_structure_in_one_line(command, tmp_path, capsys):
    assert cli.main([command, str(tmp_path / "nonexist.xyz")]) == 2
    assert "neither an existing file" in _one_error_line(capsys, command)


def test_user_errors_of_any_sub_command_are_one_line(monkeypatch, capsys):
    """What a sub-command raises instead of reporting: ValueError and ase's InputError as one line (status
    2); WAVECALC_DEBUG=1 gives the traceback; a programming error is never hidden."""
    from ase.calculators.calculator import InputError

    from ase_wavecalc import md

    def raising(exc):
        def cli_main(args):
            raise exc
        return cli_main

    for exc in (ValueError("bad value\n  on two lines"), InputError("refused"), FileNotFoundError("x.traj")):
        monkeypatch.setattr(md, "cli_main", raising(exc))
        assert cli.main(["md", "H2O"]) == 2
        line = _one_error_line(capsys, "md")
        assert line.endswith(" ".join(str(exc).split()))
    monkeypatch.setenv("WAVECALC_DEBUG", "1")
    monkeypatch.setattr(md, "cli_main", raising(InputError("refused")))
    with pytest.raises(InputError):
        cli.main(["md", "H2O"])
    monkeypatch.delenv("WAVECALC_DEBUG")
    monkeypatch.setattr(md, "cli_main", raising(TypeError("a bug")))
    with pytest.raises(TypeError):
        cli.main(["md", "H2O"])


@pytest.mark.parametrize("args", [["evaluate", "no-such-model", "x.db"], ["train", "no-such.toml", "--out", "r"],
                                  ["export", "no-such-run", "m"]])
def test_training_commands_report_input_errors_with_status_2(args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(args) == 2
    _one_error_line(capsys, args[0])
    assert list(tmp_path.iterdir()) == []
