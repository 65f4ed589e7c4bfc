"""Test-session settings, and the session-wide water dataset of the training tests.

OpenMP threads that busy-wait make PySCF and torch calls several times slower when the 2 cores are
shared with other work; passive waiting must be set before either library loads its OpenMP runtime.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import pytest  # noqa: E402  (after the OpenMP setting)


@pytest.fixture(scope="session")
def water_db(tmp_path_factory):
    """24 distorted water molecules, RHF/STO-3G (gradient left zero), as a dataset file (frame ids 100,
    102, ...): built once per session, shared by every test file that asks for it."""
    from _train_helpers import write_water_db

    return write_water_db(tmp_path_factory.mktemp("data") / "water_hf_sto3g.db")
