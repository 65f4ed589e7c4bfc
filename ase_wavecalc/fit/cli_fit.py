"""``wavecalc fit MOLECULE --out MODEL_DIR --budget 2h``: from a molecule to a model in one command.

Exit status: 0 when the model is written, 2 for input refused before any work, 130/143 when interrupted (the
same command resumes), 1 on other errors.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

__all__ = ["add_cli_arguments", "cli_main", "parse_budget"]


def parse_budget(text: str) -> float:
    """Seconds from "2h", "90m", "3h30m", "45min", "7200s" or a bare number of hours."""
    s = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s) * 3600.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|hours?|m|min|minutes?|s|sec|seconds?)", s)
    if not parts or "".join(a + b for a, b in parts) != s:
        raise ValueError(f"cannot read the budget {text!r}: use e.g. 2h, 90m, 3h30m")
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0}
    return sum(float(a) * unit[b[0]] for a, b in parts)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("molecule", metavar="MOLECULE", nargs="?",
                        help="an ASE molecule name (H2O, CH3CH2OH, ...), a SMILES string (needs RDKit) or a "
                             "structure file ASE reads (xyz, sdf, ...; path@INDEX picks a frame)")
    parser.add_argument("--out", metavar="MODEL_DIR", help="directory of the model to write (required)")
    parser.add_argument("--budget", default="2h", help="wall time for the whole fit (e.g. 2h, 90m, 3h30m)")
    parser.add_argument("--method", default="pbe", help="PySCF RKS functional, or hf")
    parser.add_argument("--basis", default="def2-svp", help="PySCF basis set")
    parser.add_argument("--charge", type=int, default=0, help="total charge (closed shell)")
    parser.add_argument("--smiles", action="store_true",
                        help="read MOLECULE as SMILES even where it is also an ASE name (CO: methanol, not CO)")
    parser.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    parser.add_argument("--workers", type=int, default=2,
                        help="cores: labelling processes in the labelling phase; training takes one of them later")
    parser.add_argument("--workdir", default=None,
                        help="work directory (datasets, runs, state; default: MODEL_DIR.work); the same command "
                             "resumes from it")
    parser.add_argument("--data-out", default=None, help="folder for the npz parts of the labelled data "
                                                        "(default: WORKDIR/data)")
    parser.add_argument("--recipe", default=None, help="a TOML recipe merged over the shipped default")
    parser.add_argument("--data", default=None, metavar="FRAMES",
                        help="frames of this molecule already labelled at the same level of theory, trained on "
                             "beside the fit's own: a dataset file (.db) or a folder of npz parts (part-*.npz)")
    parser.add_argument("--dask-scheduler", default=None, metavar="tcp://HOST:PORT",
                        help="label on a Dask cluster instead of local processes")
    parser.add_argument("--seed", type=int, default=0, help="sampling and training seed")
    parser.add_argument("--pack", default=None, metavar="DIR",
                        help="write a compact copy of the work directory to DIR (to commit; weights only) and exit")
    parser.add_argument("--unpack", default=None, metavar="DIR",
                        help="start the work directory from a packed copy (a fit begun elsewhere), then go on")
    parser.add_argument("--device", default=None, metavar="DEVICE",
                        help="where training runs: cpu, cuda or cuda:N (default: cpu, or what a resumed fit used)")
    parser.add_argument("--print-recipe", action="store_true", help="print the default recipe and exit")


def _refuse(message: str) -> int:
    print(f"wavecalc fit: error: {message}", file=sys.stderr)
    return 2


def cli_main(args) -> int:
    from .molecule import FitInputError, check_molecule, label_seconds_estimate, resolve_molecule
    from .recipe import RecipeError, default_recipe_text, load_recipe

    if args.print_recipe:
        print(default_recipe_text())
        return 0
    missing = [name for name, value in (("MOLECULE", args.molecule), ("--out", args.out)) if value is None]
    if missing:
        return _refuse(f"the following arguments are required: {', '.join(missing)}")
    try:
        if args.device is not None:
            from ..devices import resolve_device

            resolve_device(args.device)     # DeviceError (a ValueError): refused before any work
        budget_s = parse_budget(args.budget)
        recipe, recipe_text = load_recipe(args.recipe)
        atoms = resolve_molecule(args.molecule, smiles=args.smiles)
        check_molecule(atoms, args.basis, args.charge, args.method)
        if args.workers < 1:
            raise FitInputError(f"--workers must be >= 1, got {args.workers}")
        if args.data is not None:
            from .user_data import check_user_data

            check_user_data(args.data, atoms.numbers, args.method, args.basis, args.charge)
        # the smallest budget: the recipe's floor, or the time to label 30 frames in the labelling phase
        t_label = label_seconds_estimate(atoms, args.basis, args.method, args.charge)
        ends = recipe["budget"]["phase_end"]
        need = max(60.0 * float(recipe["budget"]["minimum_min"]),
                   30 * t_label / args.workers / (ends["label"] - ends["sample"]))
        if budget_s < need:
            raise FitInputError(f"a budget of {budget_s / 60:.0f} min is too small for one round of this molecule "
                                f"({atoms.get_chemical_formula()}, ~{t_label:.0f} s per reference): the minimum is "
                                f"{need / 60:.0f} min")
    except (FitInputError, RecipeError, ValueError) as exc:
        return _refuse(str(exc))
    from .pack import pack, unpack
    from .pipeline import FitInterrupted, run_fit
    from .state import FitLockedError

    out = Path(args.out)
    workdir = Path(args.workdir) if args.workdir else out.with_name(out.name + ".work")
    try:
        if args.pack:
            pack(workdir, args.pack)
            print(f"packed {workdir} into {args.pack}")
            return 0
        if args.unpack and not (workdir / "fit.json").exists():
            unpack(args.unpack, workdir, log=lambda s: print(s, flush=True))
    except (ValueError, FitLockedError, FitInputError) as exc:
        return _refuse(str(exc))
    request = {"molecule": args.molecule, "numbers": [int(z) for z in atoms.numbers],
               "positions": atoms.positions.tolist(), "method": args.method.lower(), "basis": args.basis.lower(),
               "charge": int(args.charge), "budget_s": budget_s, "workers": int(args.workers),
               "seed": int(args.seed), "name": args.name or out.name, "device": args.device,
               "command": "wavecalc fit " + " ".join(shlex.quote(a) for a in sys.argv[2:])
               if len(sys.argv) > 2 and sys.argv[1] == "fit" else None}
    how = atoms.info.get("resolved_from", "")
    print(f"molecule: {atoms.get_chemical_formula()}, {len(atoms)} atoms, from {how} {args.molecule!r}"
          + (" (pass --smiles to read it as SMILES)" if how == "ASE collection name" else ""), flush=True)
    try:
        run_fit(request, recipe, recipe_text, workdir, out, data_out=args.data_out,
                dask_scheduler=args.dask_scheduler, user_data=args.data,
                log=lambda s: print(s, flush=True))
    except FitInterrupted as exc:
        print(f"wavecalc fit: interrupted ({exc}); run the same command to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("wavecalc fit: interrupted; run the same command to resume", file=sys.stderr)
        return 130
    except (FitLockedError, FitInputError) as exc:
        return _refuse(str(exc))
    print(f"model written to {out}; report: {out / 'report.md'}")
    return 0
