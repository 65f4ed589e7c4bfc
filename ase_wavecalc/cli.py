"""The ``wavecalc`` command line: one sub-command per job, each implemented in its own module.

Each module named in ``SUBCOMMANDS`` provides ``add_cli_arguments(parser)`` and ``cli_main(args) -> int``;
modules are imported only when their sub-command runs (or when ``--help`` lists them).
"""
from __future__ import annotations

import argparse
import importlib
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
    "ir": ("ase_wavecalc.ir", "infrared spectrum: harmonic (ase Infrared) and from MD dipoles"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only the module of ``command`` (if any) is imported, so start-up stays fast."""
    parser = argparse.ArgumentParser(prog="wavecalc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
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
        return 1
    module = importlib.import_module(args._module)
    return int(module.cli_main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
