"""Checks of user input at the ASE boundary; every problem raises ``ase...InputError`` naming it.

``check_atoms`` is called by :class:`ase_wavecalc.WaveCalculator` before every calculation. It rejects:

| problem | example message |
|---|---|
| empty Atoms | "no atoms" |
| periodic cell | "periodic boundary conditions (pbc=[True, True, True]) are not supported ..." |
| NaN/inf positions | "position of atom 3 (H) is not finite ..." |
| unsupported element | "element Xe (Z=54) is not supported ... supported: H, C, O" |
| element missing from the basis | "basis 'sto-3g' has no functions for element Xe (Z=54)" |
| non-integer charge | "charge must be an integer" |
| charge not supported | "charge 1 is not supported ..." |
| spin != 0 / odd electron count | "closed-shell molecules only ..." |
| overlapping atoms | "atoms 0 (O) and 1 (H) are 0.050 Angstrom apart ..." |
"""
from __future__ import annotations

import functools
import warnings

import numpy as np
from ase.calculators.calculator import InputError
from ase.data import chemical_symbols

__all__ = ["check_atoms", "charge_and_spin_of", "check_model_level", "spin_from_multiplicity", "n_occupied",
           "MIN_DISTANCE", "MULTIPLICITY_NAMES"]

MIN_DISTANCE = 0.1  # Angstrom: closer atoms are rejected as overlapping
# calculator parameters that give the spin multiplicity 2S + 1, as other ASE calculators spell it (geomeTRIC's
# ASE engine, ORCA and Gaussian: mult; Psi4: multiplicity); WaveCalculator's own ``spin`` is 2S
MULTIPLICITY_NAMES = ("mult", "multiplicity")


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"


@functools.lru_cache(maxsize=512)
def _basis_has_element(basis: str, symbol: str) -> bool:
    from pyscf.gto import basis as pyscf_basis

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shells = pyscf_basis.load(basis, symbol)
    except Exception:  # BasisNotFoundError, or an unknown basis name
        return False
    return len(shells) > 0


def check_atoms(atoms, elements=None, charge=0, spin=0, basis=None, *, charges=None,
                min_distance: float = MIN_DISTANCE) -> None:
    """Raise ``InputError`` unless ``atoms`` is a valid closed-shell, non-periodic molecule.

    Parameters
    ----------
    atoms: ase.Atoms (positions in Angstrom).
    elements: supported atomic numbers (or symbols); None means any element with ``basis`` functions.
    charge: total charge requested (integer).
    spin: number of unpaired electrons (2S) requested; only 0 is supported.
    basis: PySCF basis name; when given, every element must have functions in it.
    charges: the charges the provider supports (e.g. ``{0}`` for a network trained on neutral
        molecules); None allows any integer charge that gives an even electron count.
    min_distance: atoms closer than this (Angstrom) are reported as overlapping.
    """
    n = len(atoms)
    if n == 0:
        raise InputError("no atoms: the Atoms object is empty")

    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        raise InputError(f"periodic boundary conditions (pbc={pbc.tolist()}) are not supported: "
                         "ase-wavecalc computes isolated molecules; set atoms.pbc = False")

    numbers = np.asarray(atoms.numbers, dtype=int)
    positions = np.asarray(atoms.positions, dtype=float)
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"position of atom {i} ({_symbol(numbers[i])}) is not finite "
                         f"({positions[i].tolist()}); {len(bad)} atom(s) have NaN or inf positions")

    unique = sorted(set(numbers.tolist()))
    for z in unique:
        if z <= 0:
            raise InputError(f"element {_symbol(z)} (Z={z}) is not a real atom and is not supported "
                             "(ghost/dummy atoms are not allowed)")
    if elements is not None:
        allowed = {int(z) if not isinstance(z, str) else chemical_symbols.index(z) for z in elements}
        missing = [z for z in unique if z not in allowed]
        if missing:
            names = ", ".join(f"{_symbol(z)} (Z={z})" for z in missing)
            supported = ", ".join(_symbol(z) for z in sorted(allowed))
            raise InputError(f"element {names} is not supported; supported elements: {supported}")
    if isinstance(basis, str):
        missing = [z for z in unique if not _basis_has_element(basis, _symbol(z))]
        if missing and len(missing) == len(unique) and not _basis_has_element(basis, "H"):
            raise InputError(f"basis {basis!r} is not known to PySCF (or has none of the elements "
                             f"{', '.join(_symbol(z) for z in unique)})")
        if missing:
            z = missing[0]
            raise InputError(f"basis {basis!r} has no functions for element {_symbol(z)} (Z={z})")

    try:
        charge_ok = float(charge) == int(charge)
    except (TypeError, ValueError):
        charge_ok = False
    if not charge_ok:
        raise InputError(f"charge must be an integer, got {charge!r}")
    charge = int(charge)
    if charges is not None and charge not in {int(c) for c in charges}:
        raise InputError(f"charge {charge} is not supported by this Hamiltonian provider; supported: "
                         f"{sorted(int(c) for c in charges)}")
    try:
        spin_ok = float(spin) == int(spin)
    except (TypeError, ValueError):
        spin_ok = False
    if not spin_ok or int(spin) != 0:
        raise InputError(f"closed-shell molecules only: spin={spin!r} (2S, number of unpaired "
                         "electrons) is not supported, use spin=0")
    n_electrons = int(numbers.sum()) - charge
    if n_electrons <= 0:
        raise InputError(f"{n_electrons} electrons (sum of Z = {numbers.sum()}, charge {charge}): "
                         "at least two electrons are needed")
    if n_electrons % 2:
        raise InputError(f"closed-shell molecules only: {atoms.get_chemical_formula()} with charge "
                         f"{charge} has {n_electrons} electrons (odd, an open shell); change the charge "
                         "by one to get a closed shell")

    if n > 1:
        from scipy.spatial import cKDTree

        pairs = cKDTree(positions).query_pairs(r=float(min_distance), output_type="ndarray")
        if len(pairs):
            dist = np.linalg.norm(positions[pairs[:, 0]] - positions[pairs[:, 1]], axis=1)
            k = int(np.argmin(dist))
            i, j = sorted(int(x) for x in pairs[k])
            raise InputError(f"atoms {i} ({_symbol(numbers[i])}) and {j} ({_symbol(numbers[j])}) are "
                             f"{dist[k]:.3f} Angstrom apart (overlapping; minimum {min_distance} "
                             f"Angstrom); {len(pairs)} such pair(s)")


def _integer(value, what: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not np.isfinite(number) or abs(number - round(number)) > 1e-6:
        raise InputError(f"{what} must be an integer, got {value!r}")
    return int(round(number))


def spin_from_multiplicity(params: dict) -> dict:
    """``params`` with ``mult``/``multiplicity`` (2S + 1) given as ``spin`` (2S). ``InputError`` for a
    multiplicity that is not an integer >= 1, or spellings that give different spins (``spin=None``: not
    given)."""
    given = {k: params[k] for k in MULTIPLICITY_NAMES if k in params}
    if not given:
        return params
    spins = {}
    for name, value in given.items():
        multiplicity = _integer(value, f"{name} (the spin multiplicity 2S + 1)")
        if multiplicity < 1:
            raise InputError(f"{name} is the spin multiplicity 2S + 1 (>= 1), got {value!r}")
        spins[name] = multiplicity - 1
    if params.get("spin") is not None:
        spins["spin"] = _integer(params["spin"], "spin (2S)")
    if len(set(spins.values())) > 1:
        raise InputError("contradicting spins: " + ", ".join(f"{k}={params[k]!r}" for k in spins)
                         + f" ({' and '.join(MULTIPLICITY_NAMES)} are 2S + 1, spin is 2S)")
    out = {k: v for k, v in params.items() if k not in MULTIPLICITY_NAMES}
    out["spin"] = next(iter(spins.values()))
    return out


def charge_and_spin_of(atoms, charge=0, spin=0, default_charge: int = 0) -> tuple[int, int, str]:
    """The total charge and 2S a calculation of ``atoms`` is for: ``(charge, spin, source)``.

    The Atoms may say it themselves, in the conventions of other ASE calculators: ``atoms.info["charge"]``
    (MACE-OMOL, fairchem, AIMNet2), initial charges (``set_initial_charges``; their sum, as tblite reads
    them), ``atoms.info["spin"]`` (the spin multiplicity 2S + 1, as in fairchem and MACE-OMOL) and initial
    magnetic moments (their sum is 2S). Where the Atoms say nothing, the calculator's ``charge``/``spin``
    parameters hold; a ``charge`` of None means "not given", and then ``default_charge`` (e.g. a model's
    trained charge) holds where the Atoms say nothing. Contradictions raise ``InputError`` naming both sources
    (never a silent choice): two Atoms sources that differ, or an Atoms charge that differs from a non-zero
    ``charge`` parameter.
    ``source`` names where the charge came from (for error messages).
    """
    given = charge is not None
    charge = _integer(charge if given else default_charge, "charge")
    found = []
    if atoms.info.get("charge") is not None:
        found.append(("atoms.info['charge']", _integer(atoms.info["charge"], "atoms.info['charge']")))
    initial = np.asarray(atoms.get_initial_charges(), dtype=float)
    if initial.size and np.any(initial != 0):
        found.append(("the initial charges (their sum)", _integer(initial.sum(), "the sum of the initial charges")))
    if len({c for _, c in found}) > 1:
        raise InputError("the Atoms give two different total charges: "
                         + " and ".join(f"{name} = {c}" for name, c in found))
    source = "charge parameter" if given else "the default charge"
    if found:
        name, atoms_charge = found[0]
        if given and charge != 0 and charge != atoms_charge:
            raise InputError(f"charge={charge} was asked for, but {name} = {atoms_charge}")
        charge, source = atoms_charge, name

    spin = _integer(spin, "spin")
    spins = []
    if atoms.info.get("spin") is not None:
        multiplicity = _integer(atoms.info["spin"], "atoms.info['spin'] (the spin multiplicity 2S + 1)")
        if multiplicity < 1:
            raise InputError(f"atoms.info['spin'] is the spin multiplicity 2S + 1 (>= 1), got {multiplicity}")
        spins.append(("atoms.info['spin'] (multiplicity)", multiplicity - 1))
    magmoms = np.asarray(atoms.get_initial_magnetic_moments(), dtype=float)
    if magmoms.size and np.any(magmoms != 0):
        if magmoms.ndim != 1:
            raise InputError("non-collinear initial magnetic moments are not supported")
        spins.append(("the initial magnetic moments (their sum)", abs(_integer(magmoms.sum(),
                                                                             "the sum of the initial magnetic moments"))))
    for name, value in spins:
        if value != 0:
            raise InputError(f"closed-shell molecules only: {name} gives 2S = {value} unpaired electrons; "
                             "ase-wavecalc computes closed-shell singlets (spin 0)")
    return charge, spin, source


def n_occupied(numbers, charge: int = 0, mol=None) -> int:
    """Number of doubly occupied orbitals of a closed-shell molecule; error for an odd electron count.

    With a PySCF ``mol`` its electron count is used (it excludes electrons replaced by ECPs)."""
    n_elec = int(mol.nelectron) if mol is not None else int(np.sum(numbers)) - int(charge)
    if n_elec <= 0 or n_elec % 2:
        raise ValueError(f"{n_elec} electrons: only closed-shell molecules (even electron count) are supported")
    return n_elec // 2


def _method_key(method) -> str:
    m = str(method).strip().lower()
    return "hf" if m in ("hf", "rhf") else m


def _basis_key(basis) -> str:
    return "".join(ch for ch in str(basis).lower() if ch not in "-_ ")   # as PySCF matches basis names


def check_model_level(name: str, card: dict, method=None, basis=None) -> None:
    """``InputError`` when a ``method`` or ``basis`` given together with a model contradicts every level of
    theory the model was trained on (its card's ``level_of_theory``, and ``energy_level_of_theory`` for a
    transfer-learned model): a model predicts its own level, whatever the parameters say. None: not given."""
    levels = {}
    for what, lv in (("orbitals", card.get("level_of_theory")), ("energies", card.get("energy_level_of_theory"))):
        if lv:
            kind = str(lv.get("method", "")).lower()
            lv_method = _method_key(lv.get("xc") if kind == "rks" else lv.get("method") or lv.get("xc"))
            levels.setdefault((lv_method, str(lv.get("basis") or card.get("basis"))), []).append(what)
    if (method is None and basis is None) or not levels:
        return
    for lv_method, lv_basis in levels:
        if ((method is None or _method_key(method) == lv_method)
                and (basis is None or _basis_key(basis) == _basis_key(lv_basis))):
            return
    named = [f"{m.upper()}/{b}" + (f" ({' and '.join(w)})" if len(levels) > 1 else "")
             for (m, b), w in levels.items()]
    asked = ", ".join(f"{k}={v!r}" for k, v in (("method", method), ("basis", basis)) if v is not None)
    raise InputError(f"model {name!r} was trained on {' and '.join(named)} and predicts that, not {asked}: "
                     f"leave method and basis out with a model (or drop model= to run PySCF at {asked})")
