"""Conventions of the repository as a whole: one version, one set of unit constants, module tables that name
every module, and no rejected design inside the package."""
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_everywhere():
    """pyproject.toml, ase_wavecalc._version (read by the package root, `wavecalc --version` and the model
    files' "versions"), and the installed distribution name the same version."""
    import tomllib
    from importlib.metadata import version

    import ase_wavecalc
    from ase_wavecalc import _version, cli
    from ase_wavecalc.model.io import _versions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == _version.__version__ == ase_wavecalc.__version__ == version("ase-wavecalc")
    assert _versions()["ase_wavecalc"] == _version.__version__ == cli.version()


def test_unit_constants_come_from_the_units_module():
    """No module, benchmark or example carries its own Hartree or Bohr constant (ase_wavecalc/units.py takes
    them from ase.units, so every number agrees with ASE to the last digit)."""
    pattern = re.compile(r"27\.21138|0\.5291772")
    files = [p for folder in ("ase_wavecalc", "benchmarks", "examples") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 50
    offenders = [str(p.relative_to(ROOT)) for p in files if pattern.search(p.read_text())]
    assert offenders == []


def test_module_tables_name_every_module():
    """The module table of ase_wavecalc.train's docstring names every module of the package, and the module
    table of docs/design.md every top-level module of ase_wavecalc (and has no row for one that is not)."""
    import ase_wavecalc.train

    train = {p.stem for p in (ROOT / "ase_wavecalc" / "train").glob("*.py")} - {"__init__"}
    listed = set(re.findall(r"``(\w+)``", ase_wavecalc.train.__doc__.split("Heavy imports")[0]))
    assert train <= listed, train - listed
    design = (ROOT / "docs" / "design.md").read_text().split("## Modules")[1].split("\n## ")[0]
    rows = set(re.findall(r"^\| `(\w+\.py)` \|", design, flags=re.M))
    modules = {p.name for p in (ROOT / "ase_wavecalc").glob("*.py")} - {"__init__.py"}
    assert {m for m in modules if f"`{m}`" in design} == modules
    assert rows <= modules, rows - modules


def test_the_rejected_density_functional_lives_beside_its_benchmark():
    """Design 2 of the energy paths (a learned functional of P) was measured and not adopted: it is not a
    module of the package, and the benchmark that measured it imports it from benchmarks/."""
    assert importlib.util.find_spec("ase_wavecalc.density_functional") is None
    assert (ROOT / "benchmarks" / "_density_functional.py").is_file()
    assert "from _density_functional import DensityFunctional" in (ROOT / "benchmarks" / "density_functional.py").read_text()


def test_every_subpackage_is_installed():
    """pyproject.toml names every folder of ase_wavecalc that is a package, and models/ as ase_wavecalc.models:
    `pip install .` (not editable) copies only what the list names, so a sub-package left out of it works in
    the editable checkout of the tests and is missing for a user (ase_wavecalc.energy_paths once was)."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ase_wavecalc").rglob("__init__.py")}
    assert set(setuptools["packages"]) == folders | {"ase_wavecalc.models"}
    assert setuptools["package-dir"] == {"ase_wavecalc.models": "models"}
    assert (ROOT / "models" / "__init__.py").is_file()


def test_committed_reports_link_only_committed_files():
    """Every image or file a committed Markdown page links to by a relative path exists beside it (fit reports
    copied into benchmarks/results once lost their learning-curve images)."""
    pages = [*ROOT.glob("models/*/report.md"), *ROOT.glob("benchmarks/results/**/*.md"), *ROOT.glob("docs/*.md"),
             ROOT / "README.md"]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not missing, "links to files that are not there:\n" + "\n".join(missing)
