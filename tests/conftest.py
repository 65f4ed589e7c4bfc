"""Test-session settings.

OpenMP threads that busy-wait make PySCF and torch calls several times slower when the 2 cores are
shared with other work; passive waiting must be set before either library loads its OpenMP runtime.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
