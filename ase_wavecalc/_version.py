"""The package version, in a module of its own that imports nothing, so that any module (the model files'
``versions``, ``wavecalc --version`` from a source tree) reads it without importing back up from the package
root. Keep it equal to ``version`` in pyproject.toml (tests/test_cli.py checks both against the installed
distribution)."""
__version__ = "0.1.0"
