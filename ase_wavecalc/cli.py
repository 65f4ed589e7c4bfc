"""The ``wavecalc`` command line: one sub-command per job, each implemented in its own module.

Each module named in ``SUBCOMMANDS`` provides ``add_cli_arguments(parser)`` and ``cli_main(args) -> int``;
modules are imported only when their sub-command runs (or when ``--help`` lists them).

Exit status: 0 done, 1 the work failed (a worker died, MD stopped), 2 a mistake in the input (argparse's
own errors included), 130 interrupted. A user error that a sub-command raises instead of reporting
(``user_errors()``) ends as one line on stderr with status 2; ``WAVECALC_DEBUG=1`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "generate": ("ase_wavecalc.generate", "sample geometries and compute PySCF reference data"),
    "import-npz": ("ase_wavecalc.npz_import", "import pre-computed npz reference sets into a dataset file"),
    "export-npz": ("ase_wavecalc.npz_export", "export a dataset file as compressed npz parts (to commit it)"),
    "train": ("ase_wavecalc.train.cli_train", "train a Hamiltonian model from a TOML config"),
    "finetune": ("ase_wavecalc.train.cli_finetune", "train a model further on high-level energies (transfer)"),
    "committee": ("ase_wavecalc.train.cli_committee", "add an uncertainty committee (energy_std, forces_std) to a model"),
    "evaluate": ("ase_wavecalc.train.cli_evaluate", "evaluate a model on a dataset (Hamiltonian metrics)"),
    "export": ("ase_wavecalc.train.cli_export", "export a training checkpoint as a shipped model"),
    "fit": ("ase_wavecalc.fit.cli_fit", "from a molecule to a trained model in one command (sample, label, train, test)"),
    "md": ("ase_wavecalc.md", "run molecular dynamics with WaveCalculator"),
    "ir": ("ase_wavecalc.ir_cli", "infrared spectrum: harmonic (ase Infrared) and from MD dipoles"),
}


# these sub-commands (ase_wavecalc/train/cli_*.py) return 1 only after reporting a mistake in the input
# in one line: status 2, as every other sub-command's, until they return 2 themselves
REPORT_INPUT_ERRORS_WITH_1 = frozenset({"train", "finetune", "committee", "evaluate", "export"})

DESCRIPTION = ("Molecular dynamics, geometry optimization and IR spectra at DFT quality from a neural network "
               "that predicts the molecule's Kohn-Sham Hamiltonian; and the tools that make such a model: "
               "reference data with PySCF, training, export, evaluation.")
EPILOG = "wavecalc COMMAND --help shows a command's options and their defaults."


def version() -> str:
    """The installed distribution's version (the package's ``__version__`` when run from a source tree)."""
    try:
        from importlib.metadata import PackageNotFoundError, version as dist_version
        return dist_version("ase-wavecalc")
    except (ImportError, PackageNotFoundError):
        from ._version import __version__
        return __version__


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help ("(default: ...)"), except where there is none to show (None,
    a switch that is off) or the help text already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the module of ``command`` (if any) is imported, so start-up stays fast."""
    parser = argparse.ArgumentParser(prog="wavecalc", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        p.set_defaults(_module=module_name)
        if name != command:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a missing optional dependency only disables that sub-command
            p.set_defaults(_import_error=exc)
            continue
        module.add_cli_arguments(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None) is not None:
        print(f"wavecalc {args.command}: unavailable: {args._import_error}", file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        status = int(module.cli_main(args) or 0)
    except KeyboardInterrupt:
        print(f"\nwavecalc {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not isinstance(exc, user_errors()) or os.environ.get("WAVECALC_DEBUG"):
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        print(f"wavecalc {args.command}: error: {text}", file=sys.stderr)
        return 2
    return 2 if status == 1 and args.command in REPORT_INPUT_ERRORS_WITH_1 else status


def user_errors() -> tuple:
    """The exceptions that mean a mistake in the input: bad values and files, a calculator refusing its
    input (ase InputError), a missing optional dependency (imported here, not at start-up)."""
    from ase.calculators.calculator import InputError

    return (ValueError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
            PermissionError, InputError, ImportError)


if __name__ == "__main__":
    sys.exit(main())
