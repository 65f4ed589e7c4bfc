"""The molecule of a fit: from an ASE collection name, a SMILES string or a structure file, checked before
any hour is spent.

``resolve_molecule(spec)`` -> ``ase.Atoms`` (Angstrom, no cell). A spec that is an existing file is read with
ASE; a name of ``ase.build.molecule`` (the G2 collection, ``ase.collections.g2.names``: "H2O", "CH3CH2OH", ...) is built; anything else is taken as SMILES and embedded in 3-D by RDKit (an
optional extra: ``pip install rdkit``), with hydrogens added and an MMFF force-field minimum.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["FitInputError", "resolve_molecule", "check_molecule", "label_seconds_estimate"]


class FitInputError(ValueError):
    """Input that ``wavecalc fit`` refuses before it starts (named in the message)."""


def _from_smiles(smiles: str):
    from ase import Atoms

    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import AllChem
    except ImportError:
        raise FitInputError(f"{smiles!r} is neither a file nor an ASE molecule name; as a SMILES string it needs "
                            "RDKit, which is not installed: pip install 'ase-wavecalc[smiles]' (or pip install rdkit)") from None
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise FitInputError(f"RDKit cannot parse {smiles!r} as SMILES (and it is neither a file nor an ASE "
                            "molecule name)")
    mol = Chem.AddHs(mol)
    if AllChem.EmbedMolecule(mol, randomSeed=0xC0FFEE) != 0:
        raise FitInputError(f"RDKit could not embed {smiles!r} in 3-D")
    try:
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    except Exception:  # noqa: BLE001  (no MMFF parameters: the embedded geometry is a fine start for xTB)
        pass
    charge = Chem.GetFormalCharge(mol)
    pos = mol.GetConformer().GetPositions()
    atoms = Atoms(numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=pos)
    atoms.info["smiles_charge"] = int(charge)
    return atoms


def resolve_molecule(spec: str, smiles: bool = False):
    """``ase.Atoms`` for a file path (``path@INDEX`` picks a frame), an ``ase.build.molecule`` name or SMILES.
    Names come before SMILES ("CO" is carbon monoxide), except names of a lone atom ("C" is methane);
    ``smiles=True`` reads ``spec`` as SMILES only. ``atoms.info["resolved_from"]`` says which reading was
    taken: "file", "ASE collection name" or "SMILES"."""
    from ase.build import molecule

    spec = str(spec).strip()
    if not spec:
        raise FitInputError("no molecule given")
    path = spec.partition("@")[0]
    source = "SMILES"
    if smiles:
        atoms = _from_smiles(spec)
    elif os.path.exists(path):
        source = "file"
        from ..sampling import load_structure
        try:
            atoms = load_structure(spec)
        except Exception as exc:  # noqa: BLE001  (any reader error is the user's file)
            raise FitInputError(f"cannot read a molecule from {spec!r}: {exc}") from None
    else:
        try:
            atoms = molecule(spec)
            source = "ASE collection name"
        except KeyError:
            if any(spec.lower().endswith(ext) for ext in (".xyz", ".sdf", ".pdb", ".traj", ".db", ".mol", ".cif")):
                raise FitInputError(f"structure file {spec!r} does not exist") from None
            atoms = _from_smiles(spec)
        else:
            if len(atoms) == 1:       # "C", "N", "O": a lone atom cannot be fitted; as SMILES it is CH4, NH3, H2O
                try:
                    atoms, source = _from_smiles(spec), "SMILES"
                except FitInputError:
                    pass              # check_molecule refuses the atom
    atoms = atoms.copy()
    atoms.info["resolved_from"] = source
    atoms.calc = None
    atoms.pbc = False
    atoms.cell = None
    atoms.center()
    return atoms


def check_molecule(atoms, basis: str, charge: int, method: str) -> None:
    """Refuse what a fit cannot do: elements the basis lacks, an odd electron count (open shell), a charge that
    contradicts a SMILES' formal charge, a single atom, an unknown method. Raises ``FitInputError``."""
    from ase.calculators.calculator import InputError

    from ..reference import normalize_method
    from ..validation import check_atoms

    if len(atoms) < 2:
        hint = (" (as SMILES it needs RDKit: pip install rdkit)"
                if atoms.info.get("resolved_from") == "ASE collection name" else "")
        raise FitInputError(f"a fit needs a molecule of at least 2 atoms, got {atoms.get_chemical_formula()}{hint}")
    smiles_charge = atoms.info.get("smiles_charge")
    if smiles_charge is not None and int(smiles_charge) != int(charge):
        raise FitInputError(f"the SMILES has formal charge {smiles_charge}, but the fit is for charge {charge}: "
                            f"pass --charge {smiles_charge}")
    try:
        normalize_method(method)
    except ValueError as exc:
        raise FitInputError(str(exc)) from None
    electrons = int(np.sum(atoms.numbers)) - int(charge)
    if electrons % 2:
        raise FitInputError(f"{atoms.get_chemical_formula()} with charge {charge} has {electrons} electrons: an "
                            "open shell, and fits are closed-shell only (pass --charge to make it even)")
    try:
        check_atoms(atoms, charge=charge, basis=basis)
    except InputError as exc:
        raise FitInputError(str(exc)) from None


def label_seconds_estimate(atoms, basis: str, method: str = "pbe", charge: int = 0) -> float:
    """Seconds per PBE reference (energy, gradient, F) on one core, before any is measured: ~6 s for a basis
    of 72 functions, scaling with its cube (measured here: ethanol 72 AOs 6 s, malondialdehyde 90 AOs 13 s,
    uracil 132 AOs 37 s, all def2-SVP; 0.25 s at least)."""
    from ..integrals import make_mol
    from ..units import angstrom_to_bohr

    nao = make_mol(atoms.numbers, angstrom_to_bohr(atoms.positions), basis, charge=int(charge)).nao_nr()
    factor = 0.6 if str(method).lower() in ("hf", "rhf") else 1.0
    return max(0.25, factor * 6.0 * (nao / 72.0) ** 3)
