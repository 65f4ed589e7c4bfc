"""``WaveCalculator``: the ASE calculator (the only place where atomic units meet eV and Angstrom).

Properties (``atoms.get_...``), computed from one Hamiltonian per geometry:

| property | shape | unit | from |
|---|---|---|---|
| energy, free_energy | () | eV | provider (total energy; free_energy = energy, no smearing) |
| forces | (n, 3) | eV/Angstrom | minus the provider's analytic gradient |
| dipole | (3,) | e*Angstrom | nuclei - Tr[P r], origin at (0, 0, 0) of the Atoms frame |
| charges | (n,) | e | Mulliken charges of P |
| energy_std | () | eV | committee spread of the energy (models with a committee; with every energy) |
| forces_std | (n, 3) | eV/Angstrom | committee spread of the forces, per component (on request) |

``calc.results`` holds only ASE's properties (``ase.calculators.calculator.all_properties``), so that
``SinglePointCalculator(atoms, **calc.results)`` and ASE's writers take it; the two spreads are in
``calc.uncertainty`` (``calc.get_property("energy_std", atoms)`` works as for the others), and
``atoms.info["energy_std"]`` (eV) of the Atoms computed carries the energy's, so that trajectories and
extxyz files keep it.

With a readout-energy model (model card ``energy_path = "readout"``) energy and forces do not need the
Hamiltonian: dipole, charges and everything below are then computed on the first request at a geometry.

Electronic structure (methods of the calculator; computed on demand, cached with the results):

| method | returns | unit |
|---|---|---|
| get_eigenvalues(kpt=0, spin=0) | orbital energies (nmo,), ascending | eV |
| get_occupation_numbers(kpt=0, spin=0) | 2 or 0 per orbital (closed shell, spin-summed) | electrons |
| get_homo_lumo() | (HOMO, LUMO) | eV |
| get_fermi_level() | mid-gap (HOMO + LUMO) / 2, a convention for molecules | eV |
| get_number_of_bands() / get_number_of_spins() | nmo / 1 | - |
| get_hamiltonian() / get_core_hamiltonian() | F / h (nao, nao), PySCF AO order | Hartree |
| get_overlap() / get_density_matrix() / get_mo_coefficients() | S / P / C | a.u. |
| get_pseudo_density(...) | electron density on the grid of the atoms' cell (ASE's convention: `ase.io.write` of a cube) | e/Angstrom^3 |
| get_density_on_grid(...) | electron density on a box around the molecule, with origin and axes | e/Angstrom^3, Angstrom |
| get_electron_density(points) | density at points (m, 3) Angstrom | e/Angstrom^3 |
| write_cube(filename, ...) | Gaussian cube file of the density (Bohr, e/Bohr^3, as the format says) | - |
| get_hessian(atoms=None) | (3N, 3N) analytic Hessian (autograd through a model; PySCF's analytic Hessian) | eV/Angstrom^2 |
| levels_of_theory | {property: level}, e.g. energies CCSD(T)-trained, orbitals PBE-level for a transfer model | - |

Parameters (``default_parameters``; anything else is rejected): ``method`` ("hf" or a PySCF xc name),
``basis``, ``charge`` (default: what the Atoms say, else the model's trained charge, else 0), ``spin`` (2S;
only 0; ``mult`` or ``multiplicity``, 2S + 1, as other ASE calculators and geomeTRIC spell it, are taken
as ``spin``), ``conv_tol``, ``grid_level``, ``max_cycle``,
``grid_response`` (PySCF provider) and ``model`` (a trained network; selects ``ModelProvider``; a ``method``
or ``basis`` given with it must name a level the model was trained on, else ``InputError``), with
``dtype``, ``fast`` (readout models' energy and forces through ``model/fast.py``, the same function built once
per molecule: "float32", the default, or "float64"; None/False: the eager network in ``dtype``; F, orbitals,
the Hessian and ``forces_std`` always come from the eager network), ``compile`` (torch.compile of that path,
``model/compiled.py``: False, the default; True: at a molecule's first call, minutes; "auto": in a background
thread after a molecule's first ``AUTO_AFTER`` calls), ``device`` (where the network, eager and fast, runs:
"cpu", the default, "cuda", "cuda:N" or a ``torch.device``; ``InputError`` at construction without CUDA;
results come back as CPU float64 and PySCF's numerics stay on the CPU), ``out_of_domain`` ("raise", the default: geometries
outside the model's training domain raise
``InputError``; "reference": they are computed with PySCF at the model's level of theory instead, see
``providers/fallback.py``), ``reference_log`` (an ASE trajectory collecting those geometries) and ``refine``
("scf": every result is PySCF's converged SCF at the model's level, started from the model's density,
``providers/refine.py``; ``calc.scf_cycles`` gives the cycles it took). A
ready-made provider object may be passed as ``provider=`` instead (then method/basis/... do not apply).
"""
from __future__ import annotations

import functools
import threading

import numpy as np
import torch
from ase.calculators.calculator import (CalculationFailed, Calculator, InputError,
                                         PropertyNotImplementedError, all_changes)

from . import electronic
from .calculator_electronic import ElectronicStructureMixin, _torch
from .reference import ReferenceNotConverged
from .units import BOHR, HARTREE, bohr_to_angstrom, gradient_au_to_forces_ev, hartree_to_ev
from .validation import charge_and_spin_of, check_atoms, check_model_level, spin_from_multiplicity

__all__ = ["WaveCalculator"]

# parameters that configure the PySCF provider (they do not apply to a model or a given provider)
_PYSCF_KEYS = ("method", "basis", "conv_tol", "grid_level", "max_cycle", "grid_response")
# parameters that configure a model provider
_MODEL_KEYS = ("model", "dtype", "fast", "compile", "device", "out_of_domain", "reference_log", "refine")
_OUT_OF_DOMAIN = ("raise", "reference")
_SPREADS = ("energy_std", "forces_std")   # kept in calc.uncertainty, not in calc.results
# what a provider's compute may raise that the calculator reports as CalculationFailed: numerical failures of
# the electronic-structure code (a singular or non-positive-definite matrix, a closed HOMO-LUMO gap, an SCF
# that does not converge). InputError (OutOfDomainError included), CalculationFailed and
# PropertyNotImplementedError pass through as they are; anything else (TypeError, AttributeError, KeyError,
# a RuntimeError from torch, ...) is a bug and propagates unchanged.
_NUMERICAL_FAILURES = (np.linalg.LinAlgError, torch.linalg.LinAlgError, electronic.ClosedGapError,
                       ReferenceNotConverged)


def _serialized(method):
    """One request at a time per calculator (its lock, reentrant): a calculator shared by threads gives each
    the results of its own geometry (ASE keeps one ``atoms``/``results`` per calculator)."""
    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return locked


def _check_device(device) -> None:
    """``InputError`` (with ``devices.resolve_device``'s message) for a device not understood or not here."""
    from .devices import DeviceError, resolve_device

    try:
        resolve_device(device)
    except DeviceError as exc:
        raise InputError(str(exc)) from exc


class WaveCalculator(ElectronicStructureMixin, Calculator):
    """ASE calculator for closed-shell molecules from a Kohn-Sham/Fock Hamiltonian.

    Examples
    --------
    >>> WaveCalculator()                                  # exact PBE/def2-SVP with PySCF
    >>> WaveCalculator(method="hf", basis="sto-3g")
    >>> WaveCalculator(model="ethanol-pbe-def2svp")       # trained network (providers.ModelProvider)
    >>> WaveCalculator(provider=my_provider)              # any object with the providers/base.py interface

    Bad input (periodic cells, unsupported elements, open shells, NaN or overlapping atoms, unknown
    parameters, a model that cannot be loaded) raises ``ase.calculators.calculator.InputError``; numerical
    failures of the electronic-structure code (an SCF that does not converge, a singular overlap matrix,
    a closed HOMO-LUMO gap) raise ``CalculationFailed``; any other exception is a bug and propagates as
    itself.

    Threads may share a calculator: its requests run one at a time (a reentrant lock), each with its own
    geometry's results. A calculator (also a used one, and Atoms carrying it) pickles; the copy computes its
    results again on the first request.
    """

    implemented_properties = ("energy", "free_energy", "forces", "dipole", "charges", "energy_std", "forces_std")
    default_parameters = {
        "method": "pbe",
        "basis": "def2-svp",
        "charge": None,   # None: atoms.info / initial charges, else a model's trained charge, else 0
        "spin": 0,
        "conv_tol": 1e-10,
        "grid_level": 3,
        "max_cycle": 100,
        "grid_response": False,
        "model": None,
        "dtype": "float64",   # network precision with model= (the electronic structure is always float64)
        "fast": "float32",    # readout models' energy+forces: model/fast.py in float32/float64; None: eager
        "compile": False,     # torch.compile of that path: False, True (first call) or "auto" (model/compiled.py)
        "device": "cpu",      # with model=: where the network runs: "cpu", "cuda", "cuda:N" or a torch.device
        "out_of_domain": "raise",   # with model=: "raise" or "reference" (PySCF for refused geometries)
        "reference_log": None,      # with out_of_domain="reference": ASE trajectory collecting those geometries
        "refine": None,             # with model=: "scf" = PySCF SCF at the model's level from its density
    }
    discard_results_on_any_change = True

    def __init__(self, provider=None, restart=None, label=None, atoms=None, directory=".", **kwargs):
        self._provider_given = provider
        self._provider = provider
        self._result = None
        self._charge = None       # the charge of the last calculation (parameters or the Atoms)
        self._given = set()       # the parameters set by the user (not defaults): method/basis vs a model
        self._lock = threading.RLock()   # serializes calculations of threads sharing this calculator
        self.uncertainty = {}     # the committee spreads of the last calculation (eV, eV/Angstrom)
        kwargs = spin_from_multiplicity(kwargs)
        bad = sorted(set(kwargs) - set(self.default_parameters))
        if bad:
            raise InputError(f"unknown WaveCalculator parameter(s) {bad}; valid parameters: "
                             f"{sorted(self.default_parameters)} and provider=")
        if "device" in kwargs:
            _check_device(kwargs["device"])   # at construction: no CUDA here, an unknown device string
        if provider is not None:
            from .providers.base import missing_capabilities

            missing = missing_capabilities(provider)
            if missing:
                raise InputError(f"provider= lacks {missing} of the provider interface (providers/base.py "
                                 "Provider); subclass providers.HamiltonianProvider, which has every optional one")
            clash = sorted(k for k in set(_PYSCF_KEYS) | set(_MODEL_KEYS) if k in kwargs)
            if clash:
                raise InputError(f"parameters {clash} do not apply when provider= is given")
            kwargs.setdefault("charge", int(provider.charge))
        super().__init__(restart=restart, label=label, atoms=atoms, directory=directory, **kwargs)

    # -- parameters ------------------------------------------------------------------------------
    @_serialized
    def set(self, **kwargs):
        kwargs = spin_from_multiplicity(kwargs)
        bad = sorted(set(kwargs) - set(self.default_parameters) - {"parameters"})
        if bad:
            raise InputError(f"unknown WaveCalculator parameter(s) {bad}; valid parameters: "
                             f"{sorted(self.default_parameters)}")
        if "device" in kwargs:
            _check_device(kwargs["device"])
        self._given.update(k for k in kwargs if k != "parameters")
        changed = super().set(**kwargs)
        if changed and self._provider_given is None:
            self._provider = None   # rebuilt with the new settings on the next calculation
        return changed

    def reset(self):
        super().reset()
        self._result = None
        self.uncertainty = {}

    def __getstate__(self):
        """Pickling a used calculator: parameters, Atoms and provider (the loaded model, its counters), but
        not the last results, which may hold a model's autograd graph: the unpickled calculator computes
        them again on the first request (the same values). The lock is not pickled; each copy has its own."""
        state = {**self.__dict__, "_result": None, "results": {}, "uncertainty": {}}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    @_serialized
    def get_property(self, name, atoms=None, allow_calculation=True):
        """ASE's get_property (compare the Atoms, calculate if needed, return the result) under the lock;
        energy_std and forces_std from ``self.uncertainty``, after the energy or forces of ``atoms``."""
        value = super().get_property("forces" if name == "forces_std" else "energy" if name in _SPREADS
                                     else name, atoms, allow_calculation)
        if atoms is not None and value is not None:
            self._tag(atoms)           # also when the results were cached (another Atoms at the same geometry)
        if name not in _SPREADS or value is None:
            return value
        if name not in self.uncertainty:
            if not allow_calculation:
                return None
            self._add_spreads()        # energy_std comes with every energy of a committee model, else here
        value = self.uncertainty[name]
        return value.copy() if isinstance(value, np.ndarray) else value

    def _tag(self, atoms):
        """``atoms.info["energy_std"]``: the last calculation's energy spread (eV), or none (a stale one goes)."""
        if "energy_std" in self.uncertainty:
            atoms.info["energy_std"] = self.uncertainty["energy_std"]
        else:
            atoms.info.pop("energy_std", None)

    def _add_spreads(self):
        """The spreads of the energy (eV) and forces (eV/Angstrom, per component) at the last geometry: the
        provider's ``uncertainty`` (``PropertyNotImplementedError`` without a committee)."""
        spread = self.provider.uncertainty(self.atoms.numbers.copy(), self.atoms.positions / BOHR)
        self.uncertainty.setdefault("energy_std", hartree_to_ev(float(spread["energy_std"])))
        self.uncertainty["forces_std"] = np.asarray(spread["gradient_std"], dtype=float) * HARTREE / BOHR

    @property
    def provider(self):
        """The Hamiltonian provider (built from the parameters on first use)."""
        if self._provider is None:
            self._provider = self._make_provider()
        return self._provider

    def _make_provider(self):
        from . import providers

        p = self.parameters
        if p.get("out_of_domain", "raise") not in _OUT_OF_DOMAIN:
            raise InputError(f"out_of_domain must be one of {list(_OUT_OF_DOMAIN)}, got {p['out_of_domain']!r}")
        if p.get("model") is None and (p.get("out_of_domain") != "raise" or p.get("reference_log") is not None):
            raise InputError("out_of_domain and reference_log apply to a trained model (model=...); the PySCF "
                             "provider has no training domain")
        if p.get("reference_log") is not None and p.get("out_of_domain") != "reference":
            raise InputError("reference_log collects the geometries computed with out_of_domain='reference'; "
                             "set that too")
        if p.get("refine") not in (None, "scf"):
            raise InputError(f"refine must be None or 'scf', got {p['refine']!r}")
        if p.get("refine") is not None and (p.get("model") is None or p.get("out_of_domain") != "raise"):
            raise InputError("refine='scf' starts PySCF from a model's density: it needs model=, and replaces "
                             "out_of_domain='reference' (every geometry is then computed with PySCF)")
        if p.get("model") is not None:
            from .model.io import ModelFileError

            try:   # the charge is compared in calculate(), with the charge the Atoms may carry
                provider = providers.ModelProvider(p["model"], dtype=p["dtype"], fast=p["fast"],
                                                   compile=p["compile"], device=p.get("device"))
            except (FileNotFoundError, ValueError, KeyError, OSError, ModelFileError) as exc:
                # unknown name, missing or corrupt model files, wrong dtype, ...
                raise InputError(f"could not load model {p['model']!r}: {type(exc).__name__}: "
                                 f"{exc}") from exc
            check_model_level(getattr(provider, "name", str(p["model"])), provider.card or {},
                              *(p[k] if k in self._given else None for k in ("method", "basis")))
            if p.get("refine") == "scf":
                try:
                    return providers.SCFRefinedProvider(provider, conv_tol=p["conv_tol"],
                                                        max_cycle=p["max_cycle"])
                except ValueError as exc:
                    raise InputError(f"refine='scf' with model {p['model']!r}: {exc}") from exc
            if p.get("out_of_domain") == "reference":
                try:
                    provider = providers.ReferenceFallback(provider, log=p.get("reference_log"))
                except (ValueError, TypeError) as exc:   # no level_of_theory, a Hamiltonian-only model
                    raise InputError(f"out_of_domain='reference' for model {p['model']!r}: {exc}") from exc
            return provider
        try:
            return providers.PySCFProvider(
                method=p["method"], basis=p["basis"],
                charge=int((p["charge"] or 0) if self._charge is None else self._charge),
                conv_tol=p["conv_tol"],
                grid_level=p["grid_level"], max_cycle=p["max_cycle"], grid_response=p["grid_response"])
        except ValueError as exc:   # unknown functional etc.
            raise InputError(str(exc)) from exc

    def check_state(self, atoms, tol=1e-15):
        """ASE's checks, plus the charge and spin the Atoms carry in ``info`` (ASE does not compare
        ``info``, so a new ``atoms.info["charge"]`` would otherwise return the old results)."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and any(atoms.info.get(k) != self.atoms.info.get(k) for k in ("charge", "spin")):
            changes = list(changes) + ["info"]
        return changes

    # -- the calculation -------------------------------------------------------------------------
    @_serialized
    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms is None:
            raise InputError("no Atoms: attach the calculator (atoms.calc = calc) or pass atoms")
        trained = self.parameters.get("model") is not None or self._provider_given is not None
        charge, spin, source = charge_and_spin_of(
            self.atoms, self.parameters["charge"], self.parameters["spin"],
            default_charge=int(self.provider.charge) if trained else 0)
        if (self._provider is not None and self._provider_given is None and self.parameters.get("model") is None
                and int(self._provider.charge) != charge):
            self._provider = None        # PySCF: rebuilt for the charge the Atoms ask for
        self._charge = charge
        provider = self.provider
        basis = provider.basis
        check_atoms(self.atoms, elements=provider.elements, charge=charge,
                    spin=spin, basis=basis if isinstance(basis, str) else None,
                    charges=getattr(provider, "charges", None))
        if int(provider.charge) != int(charge):
            what = "was trained for" if _name_of(provider).startswith("model") else "computes"
            raise InputError(f"{_name_of(provider)} {what} molecules of total charge {provider.charge} and computes "
                             f"no other; charge {charge} was asked for ({source})")

        want_gradient = "forces" in properties or "forces_std" in properties
        numbers = self.atoms.numbers.copy()
        positions_bohr = self.atoms.positions / BOHR
        try:
            result = provider.compute(numbers, positions_bohr, want_gradient)
        except (InputError, CalculationFailed, PropertyNotImplementedError):
            raise
        except _NUMERICAL_FAILURES as exc:   # anything else propagates unchanged (module-level comment)
            raise CalculationFailed(f"{provider!r} failed: {type(exc).__name__}: {exc}") from exc
        self._result = result

        self.results, self.uncertainty = {}, {}
        # a readout-energy model defers its Hamiltonian: dipole and charges (from P) only when asked for
        if getattr(result, "materialized", True) or {"dipole", "charges"} & set(properties):
            mol = result.mol
            dm = _torch(result.dm)
            dipole = electronic.dipole_moment(dm, _ao_dipole(mol), mol.atom_charges(), mol.atom_coords())
            charges = electronic.mulliken_charges(dm, _torch(result.overlap), _ao_atom(mol),
                                                  mol.atom_charges())
            self.results.update(dipole=bohr_to_angstrom(dipole.numpy()), charges=charges.numpy())
        energy = float(result.energy)
        if np.isfinite(energy):   # NaN: a Hamiltonian-only model (no energy trained)
            self.results["energy"] = self.results["free_energy"] = hartree_to_ev(energy)
        if result.gradient is not None:
            self.results["forces"] = gradient_au_to_forces_ev(np.asarray(result.gradient, dtype=float))
        info = getattr(result, "info", {}) or {}
        if "energy_std" in info:   # a model with a committee: its spread comes with every energy
            self.uncertainty["energy_std"] = hartree_to_ev(float(info["energy_std"]))
        if atoms is not None:      # the Atoms computed carry it, into trajectories
            self._tag(atoms)
        if "forces_std" in properties:
            self._add_spreads()
        missing = [name for name in properties if name not in self.results and name not in self.uncertainty]
        if missing:
            provider.require_energy()      # raises PropertyNotImplementedError with the provider's reason
            raise PropertyNotImplementedError(f"{provider!r} did not provide {missing}")

    @_serialized
    def _electronic(self, atoms=None):
        """The HamiltonianResult of ``atoms`` (default: the last atoms; calculated if needed)."""
        if atoms is None and self.atoms is None:
            raise InputError("no calculation yet: run e.g. atoms.get_potential_energy() first (the "
                             "calculator only knows the atoms it has computed)")
        self.get_property("dipole", atoms)   # every provider gives what the dipole needs
        return self._result

    @_serialized
    def get_hessian(self, atoms=None):
        """(3N, 3N) Hessian of the energy in eV/Angstrom^2 (rows and columns atom-major: x0, y0, z0, x1, ...),
        analytic: double autograd through a model's energy path, PySCF's analytic Hessian for the exact SCF.
        ``ase.vibrations.VibrationsData.from_2d(atoms, calc.get_hessian())`` gives the harmonic modes."""
        atoms = self.atoms if atoms is None else atoms
        if atoms is None:
            raise InputError("no Atoms: pass atoms or attach the calculator first")
        self.get_potential_energy(atoms)          # every input check, and the provider for these atoms
        h = self.provider.hessian(atoms.numbers.copy(), atoms.positions / BOHR)
        return np.asarray(h, dtype=float) * HARTREE / BOHR ** 2

    @property
    def scf_cycles(self) -> int | None:
        """SCF cycles of the last calculation (PySCF, or ``refine="scf"`` from the model's density); None
        when no SCF ran (a model's prediction)."""
        info = getattr(self._result, "info", None) or {}
        return info.get("scf_cycles")

    @property
    def levels_of_theory(self) -> dict[str, str]:
        """The level of theory behind each property, e.g. for a transfer-learned model
        ``{"energy": "CCSD(T)/cc-pvtz (learned)", "forces": ..., "hessian": ..., "orbitals": "PBE/def2-svp
        (learned)", "density": ..., "dipole": ..., "charges": ..., "hamiltonian": ...}``; "(learned)" marks a
        model's prediction trained on that level, no suffix the exact calculation."""
        provider = self.provider
        card = provider.card
        if card is None:   # the exact SCF: one level for everything
            base = provider
            level = f"{str(getattr(base, 'method', '?')).upper()}/{getattr(base, 'basis', '?')}"
            return {k: level for k in _LEVEL_PROPERTIES}
        electronic_level = _level_name(card.get("level_of_theory") or {}, card.get("basis"))
        energy_level = _level_name(card.get("energy_level_of_theory") or card.get("level_of_theory") or {},
                                   card.get("basis"))
        out = {}
        for k in _LEVEL_PROPERTIES:
            level = energy_level if k in ("energy", "forces", "hessian") else electronic_level
            out[k] = f"{level} (learned)"
        return out

_LEVEL_PROPERTIES = ("energy", "forces", "hessian", "hamiltonian", "orbitals", "density", "dipole", "charges")


def _level_name(level: dict, basis=None) -> str:
    """"PBE/def2-svp" from a card's level-of-theory entry (xc for DFT, else the method name)."""
    method = level.get("xc") if str(level.get("method", "")).lower() == "rks" else level.get("method")
    method = method or level.get("xc") or "?"
    return f"{str(method).upper()}/{level.get('basis') or basis or '?'}"


def _name_of(provider) -> str:
    """"model 'NAME'" for a model provider (also wrapped), else the provider's class name, for messages."""
    name = getattr(provider, "name", None) or getattr(getattr(provider, "model", None), "name", None)
    return f"model {name!r}" if name else type(provider).__name__


def _ao_dipole(mol):
    from .integrals import ao_dipole

    return ao_dipole(mol)


def _ao_atom(mol):
    from .integrals import ao_atom_index

    return ao_atom_index(mol)

