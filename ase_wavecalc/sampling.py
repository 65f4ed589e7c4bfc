"""Candidate geometries from thermal Langevin molecular dynamics.

The driver is GFN2-xTB through tblite when it is importable (about a millisecond per step for small
molecules), else ``PySCFDriver``: a minimal ASE calculator running HF/STO-3G with PySCF (slower, but
always available). Trajectories are deterministic for a given seed on a given machine and library
build (``wavecalc generate`` stores the sampled geometries, so a re-run never depends on this).

| quantity | unit | default |
|---|---|---|
| temperature | K | 300 (Langevin target and initial Maxwell-Boltzmann velocities) |
| timestep | fs | 0.5 |
| interval | MD steps between frames | 25 |
| friction | 1/fs | 0.02 |
| equilibration | MD steps before the first frame | 200 |
| returned positions | Angstrom | (n_frames, n_atoms, 3) |
"""
from __future__ import annotations

import ctypes
import os
from contextlib import ExitStack, contextmanager

import numpy as np
from ase.calculators.calculator import CalculationFailed, Calculator, all_changes

from .units import HARTREE, HARTREE_PER_BOHR, angstrom_to_bohr
from .validation import n_occupied

__all__ = ["load_structure", "make_driver", "PySCFDriver", "sample_geometries", "check_sampling_settings",
           "start_velocities", "langevin"]

MAX_TEMPERATURE = 2000.0  # K; beyond this molecules fall apart within a few hundred fs


def start_velocities(atoms, temperature: float, rng) -> None:
    """Maxwell-Boltzmann momenta at ``temperature`` (K) from ``rng``, without total momentum or rotation."""
    from ase.md import velocitydistribution as vd

    thermalize = getattr(vd, "thermalize_momenta", None) or vd.MaxwellBoltzmannDistribution  # ASE 3.29 name
    thermalize(atoms, temperature_K=temperature, rng=rng)
    vd.Stationary(atoms)
    vd.ZeroRotation(atoms)


def langevin(atoms, timestep: float, temperature: float, friction: float, rng):
    """ASE Langevin dynamics (``timestep`` fs, ``temperature`` K, ``friction`` 1/fs) with the centre of mass
    fixed by the ``FixCom`` constraint (unless the atoms carry constraints of their own), not by
    ``Langevin(fixcm=True)``: that older form removes the centre-of-mass part of the random kicks without mass
    weighting, which heats light atoms (water at a 300 K bath ran at 750-1100 K, ethanol ~25% hot)."""
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    if not atoms.constraints:
        atoms.set_constraint(FixCom())
    return Langevin(atoms, timestep=timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                    fixcm=False, rng=rng)


def load_structure(spec) -> "ase.Atoms":  # noqa: F821
    """A molecule from a name known to ``ase.build.molecule`` ("H2O", "CH3CH2OH"), or from a file:
    xyz/extxyz/any ASE-readable format or an ASE database (first structure; ``path@INDEX`` picks
    another, with ASE's index syntax). Returns a copy without calculator, cell or periodicity.
    """
    from ase.build import molecule
    from ase.collections import g2

    spec = str(spec)
    path, _, index = spec.partition("@")
    if os.path.exists(path):
        atoms = _read(path, index or 0, spec)
        if isinstance(atoms, list):
            raise ValueError(f"{spec!r} selects {len(atoms)} structures; give one index (path@INDEX)")
    else:
        try:
            atoms = molecule(spec)
        except KeyError:
            raise ValueError(f"{spec!r} is neither an existing file nor a molecule name of "
                             f"ase.build.molecule (e.g. {', '.join(sorted(g2.names)[:6])}, ...)") from None
    return _isolated(atoms, spec)


def _read(path, index, spec):
    """``ase.io.read(path, index)``; ValueError naming ``spec`` if ASE cannot read it."""
    import ase.io

    try:
        return ase.io.read(path, index=index)
    except Exception as exc:  # ASE raises many types for unreadable files
        raise ValueError(f"cannot read structures from {spec!r}: {exc}") from exc


def _isolated(atoms, spec):
    """A copy without calculator, cell or constraints; ValueError for a periodic structure."""
    if atoms.pbc.any():
        raise ValueError(f"{spec!r} is periodic; sampling is for isolated molecules")
    out = atoms.copy()
    out.calc = None
    out.set_cell(None)
    out.set_constraint()
    return out


def load_frames(spec) -> list:
    """Every structure of a file (``path@SLICE`` selects, ASE index syntax: ``md.traj@::10``,
    ``md.traj@-50:``), as copies without calculator or cell. ValueError if the file is missing or
    unreadable, has no frames, is periodic, or its frames differ in atoms (number, elements, order)."""
    spec = str(spec)
    path, _, index = spec.partition("@")
    if not os.path.exists(path):
        raise ValueError(f"{path!r}: no such file (--geometries takes a structure file)")
    frames = _read(path, index or ":", spec)
    if not isinstance(frames, list):
        frames = [frames]
    if not frames:
        raise ValueError(f"{spec!r} selects no structures")
    frames = [_isolated(a, spec) for a in frames]
    first = frames[0].numbers
    for k, a in enumerate(frames):
        if not np.array_equal(a.numbers, first):
            raise ValueError(f"{spec!r}: frame {k} has other atoms ({a.get_chemical_formula()}, in this order) "
                             f"than frame 0 ({frames[0].get_chemical_formula()}); one molecule per dataset")
        if not np.all(np.isfinite(a.positions)):
            raise ValueError(f"{spec!r}: frame {k} has non-finite positions")
    return frames


class PySCFDriver(Calculator):
    """Fallback MD driver: closed-shell PySCF SCF (default HF/STO-3G) + analytic gradient as an ASE
    calculator (energy eV, forces eV/Angstrom). Successive calls reuse the last density as guess."""

    implemented_properties = ["energy", "forces"]
    default_parameters = {"method": "hf", "basis": "sto-3g", "charge": 0}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._scanner = None
        self._numbers = None

    def set(self, **kwargs):
        changed = super().set(**kwargs)
        if changed:
            self._scanner = None
        return changed

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        from pyscf import dft, scf

        from .integrals import make_mol
        from .reference import normalize_method

        numbers = self.atoms.numbers
        positions_bohr = angstrom_to_bohr(self.atoms.positions)
        if self._scanner is None or not np.array_equal(numbers, self._numbers):
            kind, xc = normalize_method(self.parameters.method)
            mol = make_mol(numbers, positions_bohr, self.parameters.basis, charge=self.parameters.charge)
            try:
                n_occupied(None, mol=mol)
            except ValueError as exc:
                raise CalculationFailed(f"the PySCF MD driver is closed-shell only: {exc}") from None
            mf = scf.RHF(mol) if kind == "rhf" else dft.RKS(mol, xc=xc)
            mf.verbose = 0
            self._scanner = mf.nuc_grad_method().as_scanner()
            self._numbers = numbers.copy()
        e_tot, grad = self._scanner(positions_bohr)
        if not self._scanner.converged:
            raise CalculationFailed("PySCF SCF did not converge during MD")
        self.results["energy"] = float(e_tot) * HARTREE
        self.results["forces"] = -np.asarray(grad) * HARTREE_PER_BOHR


def make_driver(driver: str = "auto", charge: int = 0):
    """(name, ASE calculator) for the MD: "auto" (tblite GFN2-xTB if importable, else PySCF HF/STO-3G),
    "xtb" (GFN2-xTB, error if tblite is missing) or "pyscf"."""
    driver = driver.lower()
    if driver not in ("auto", "xtb", "pyscf"):
        raise ValueError(f"driver must be 'auto', 'xtb' or 'pyscf', not {driver!r}")
    if driver in ("auto", "xtb"):
        try:
            from importlib.metadata import version as _version

            from tblite.ase import TBLite
        except ImportError as exc:
            if driver == "xtb":
                raise ImportError("driver 'xtb' needs tblite (pip install 'ase-wavecalc[xtb]')") from exc
        else:
            try:
                version = _version("tblite")
            except Exception:  # not installed as a distribution (e.g. a source build)
                version = "?"
            return f"GFN2-xTB (tblite {version})", TBLite(method="GFN2-xTB", charge=charge, verbosity=0)
    import pyscf.lib  # noqa: F401  (loads PySCF's OpenMP runtime now, so sampling can pin its threads)

    return "HF/STO-3G (PySCF)", PySCFDriver(method="hf", basis="sto-3g", charge=charge)


def check_sampling_settings(n_frames: int, temperature: float, interval: int, timestep: float,
                            friction: float, equilibration: int) -> None:
    """ValueError naming the first setting of ``sample_geometries`` out of range (temperature in K,
    timestep in fs, friction in 1/fs, the rest counts), so that callers can check before they start."""
    for name, value, low in (("n_frames", n_frames, 1), ("interval", interval, 1),
                             ("equilibration", equilibration, 0)):
        if int(value) != value or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value}")
    if not 0 < temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be in (0, {MAX_TEMPERATURE:g}] K, got {temperature}")
    if not timestep > 0:
        raise ValueError(f"timestep must be > 0 fs, got {timestep}")
    if not friction >= 0:
        raise ValueError(f"friction must be >= 0 1/fs, got {friction}")


def sample_geometries(atoms, n_frames: int, temperature: float = 300.0, interval: int = 25,
                      timestep: float = 0.5, friction: float = 0.02, seed: int = 0,
                      equilibration: int = 200, driver: str = "auto", charge: int = 0,
                      progress: bool = False, on_step=None):
    """Run Langevin MD and return (positions (n_frames, n_atoms, 3) Angstrom, info dict).

    Velocities start from a Maxwell-Boltzmann distribution at ``temperature`` (no net momentum or
    rotation); after ``equilibration`` steps a frame is taken every ``interval`` steps. All random
    numbers come from ``numpy.random.default_rng(seed)``, so a seed gives the same trajectory.
    ``info`` records every setting (stored as sampler metadata by ``wavecalc generate``).
    ``on_step``: called with the atoms after every step past the equilibration (read them, do not change them).
    """

    check_sampling_settings(n_frames, temperature, interval, timestep, friction, equilibration)
    n_frames, interval, equilibration = int(n_frames), int(interval), int(equilibration)
    atoms = atoms.copy()
    if atoms.pbc.any():
        raise ValueError("sampling is for isolated molecules (pbc must be False)")
    name, calc = make_driver(driver, charge=charge)
    atoms.calc = calc
    rng = np.random.default_rng(int(seed))
    start_velocities(atoms, temperature, rng)
    dyn = langevin(atoms, timestep, temperature, friction, rng)
    bar = None
    stack = ExitStack()
    stack.enter_context(_single_threaded_openmp())
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=equilibration + n_frames * interval, desc="MD sampling", unit="step",
                   dynamic_ncols=True)
    frames = np.empty((n_frames, len(atoms), 3))
    try:
        if equilibration:
            dyn.run(equilibration)
            if bar is not None:
                bar.update(equilibration)
        if on_step is not None:
            dyn.attach(lambda: on_step(atoms), interval=1)
        for i in range(n_frames):
            dyn.run(interval)
            if bar is not None:
                bar.update(interval)
            frames[i] = atoms.positions
            _check_frame(frames[i], i)
    except CalculationFailed as exc:
        raise RuntimeError(f"MD driver {name} failed: {exc}") from exc
    finally:
        if bar is not None:
            bar.close()
        stack.close()
    info = {"driver": name, "temperature_K": float(temperature), "n_frames": n_frames,
            "interval_steps": interval, "timestep_fs": float(timestep), "friction_per_fs": float(friction),
            "equilibration_steps": equilibration, "seed": int(seed), "charge": int(charge),
            "formula": atoms.get_chemical_formula()}
    return frames, info


def _check_frame(positions, i):
    if not np.all(np.isfinite(positions)):
        raise RuntimeError(f"MD produced non-finite positions at frame {i} (time step too large?)")
    if len(positions) > 1:
        d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        d[np.diag_indices(len(positions))] = np.inf
        if d.min() < 0.4:
            raise RuntimeError(f"MD frame {i}: atoms closer than 0.4 Angstrom ({d.min():.3f}); "
                               "lower the temperature or the time step")


def _loaded_openmp_libraries():
    """Paths of the OpenMP runtimes loaded in this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/lib" in line}
    except OSError:
        return []
    names = ("libgomp", "libiomp", "libomp")
    return sorted(p for p in paths if any(os.path.basename(p).startswith(n) for n in names))


@contextmanager
def _single_threaded_openmp():
    """Run OpenMP code (tblite, PySCF) on one thread inside the block, restoring the thread counts.

    Multi-threaded reductions differ in the last bits from run to run, and MD amplifies such
    differences until trajectories diverge: one thread keeps a seed's trajectory bitwise
    reproducible (and is as fast for molecules of a few dozen atoms).
    """
    saved = []
    for path in _loaded_openmp_libraries():
        try:
            lib = ctypes.CDLL(path)
            saved.append((lib, int(lib.omp_get_max_threads())))
            lib.omp_set_num_threads(1)
        except (OSError, AttributeError):
            continue
    try:
        yield
    finally:
        for lib, n in saved:
            lib.omp_set_num_threads(n)
