"""Low-energy conformers of the fit's molecule, so that its MD starts from more than one.

A molecule with rotatable groups has several minima a few kT apart (GFN2-xTB: glycine 4 within 0.15 eV,
alanine 5 within 0.14 eV, ethylene glycol 3 within 0.04 eV), separated by barriers that a few picoseconds of MD
at 300-500 K may not cross. A model whose data all come from trajectories around one of them is extrapolating
in the others, and the training-domain check cannot tell (the covalent bonds are the same). Which conformer a
user's own simulation starts from depends on how they built it, so the fit samples the low ones.

``low_conformers(start, ...)``: RDKit (optional) perceives the bonds and stereochemistry of the relaxed start
(``rdDetermineBonds``, ``AssignStereochemistryFrom3D``), embeds ``n_embed`` conformers (ETKDG) with that
stereochemistry, and the sampling driver (GFN2-xTB) relaxes each; kept are the minima with the start's bonds
(``domain.bond_signature``) and stereochemistry (isomeric SMILES) up to ``window_eV`` above the lowest,
distinct from each other (inverse distances sorted within element pairs, so a methyl group turned by 120
degrees is no new minimum), at most ``max_keep``, with the start always among them, lowest first. The start
need not be the lowest: malondialdehyde's SMILES embeds with its OH turned away from the other oxygen, 0.56 eV
above the hydrogen-bonded minimum. Without RDKit, or when its bond perception fails, the start alone. Angstrom
and eV.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["low_conformers"]

SAME = 0.01      # 1/Angstrom: RMS difference of the fingerprints (_fingerprint) below which two minima are one


def _rdkit_molecule(atoms, charge: int):
    """RDKit molecule of ``atoms`` with bonds, bond orders and 3-D stereochemistry perceived, or None."""
    try:
        from rdkit import Chem, RDLogger
        from rdkit.Chem import rdDetermineBonds
    except ImportError:
        return None
    RDLogger.DisableLog("rdApp.*")
    xyz = f"{len(atoms)}\n\n" + "\n".join(f"{s} {x:.8f} {y:.8f} {z:.8f}"
                                          for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions))
    mol = Chem.MolFromXYZBlock(xyz)
    if mol is None:
        return None
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=int(charge))
        Chem.SanitizeMol(mol)
        Chem.AssignStereochemistryFrom3D(mol)
    except Exception:  # noqa: BLE001  (RDKit raises several kinds for molecules it cannot perceive)
        return None
    return mol


def _stereo_smiles(mol, positions) -> str:
    from rdkit import Chem

    m = Chem.Mol(mol)
    conf = m.GetConformer()
    for i, p in enumerate(positions):
        conf.SetAtomPosition(i, [float(v) for v in p])
    Chem.AssignStereochemistryFrom3D(m)
    return Chem.MolToSmiles(Chem.RemoveHs(m))


def _fingerprint(numbers, positions) -> np.ndarray:
    """Inverse interatomic distances (1/Angstrom), sorted within each element pair: the same for geometries
    that differ by a permutation of like atoms (a methyl group turned by 120 degrees is the same minimum)."""
    i, j = np.triu_indices(len(positions), 1)
    inv = 1.0 / np.linalg.norm(positions[i] - positions[j], axis=1)
    z = np.asarray(numbers)
    key = np.minimum(z[i], z[j]) * 1000 + np.maximum(z[i], z[j])
    return np.concatenate([np.sort(inv[key == k]) for k in np.unique(key)])


def low_conformers(start, driver: str = "auto", charge: int = 0, n_embed: int = 8, window_eV: float = 0.25,
                   max_keep: int = 4, seed: int = 0, seconds: float | None = None, fmax: float = 0.02) -> list:
    """The low minima of the molecule of ``start`` (``ase.Atoms`` at a minimum of the driver), the start among
    them: a list of ``ase.Atoms``, lowest first, each with ``info["energy_eV"]`` (above the lowest) and
    ``info["is_start"]``; at most ``max_keep`` (the start always), up to ``window_eV`` above the lowest. Just
    the start without RDKit. ``seconds``: no new relaxation starts after this long."""
    from ase import Atoms
    from ase.optimize import BFGS

    from ..domain import bond_signature
    from ..sampling import make_driver

    t0 = time.perf_counter()
    first = start.copy()
    first.info.update(energy_eV=0.0, is_start=True)
    mol = _rdkit_molecule(start, charge) if len(start) >= 4 else None
    if mol is None:
        return [first]
    from rdkit import Chem
    from rdkit.Chem import AllChem

    reference = _stereo_smiles(mol, start.positions)
    signature = bond_signature(start.numbers, start.positions)
    embedded = Chem.Mol(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = 0xC0FFEE + int(seed)
    ids = list(AllChem.EmbedMultipleConfs(embedded, numConfs=int(n_embed), params=params))
    _, calc = make_driver(driver, charge=charge)
    probe = start.copy()
    probe.calc = calc
    try:
        found = [(float(probe.get_potential_energy()), start.positions.copy(), True)]   # (eV, positions, start?)
    except Exception:  # noqa: BLE001
        return [first]
    for cid in ids:
        if seconds is not None and time.perf_counter() - t0 > seconds:
            break
        atoms = Atoms(numbers=start.numbers, positions=embedded.GetConformer(cid).GetPositions())
        atoms.calc = calc
        try:
            BFGS(atoms, logfile=None).run(fmax=fmax, steps=300)
            energy = float(atoms.get_potential_energy())
        except Exception:  # noqa: BLE001  (a driver failure on one embedding: that conformer is skipped)
            continue
        pos = atoms.positions.copy()
        if bond_signature(start.numbers, pos) != signature or _stereo_smiles(mol, pos) != reference:
            continue                       # another isomer or stereoisomer: not this molecule's conformer
        found.append((energy, pos, False))
    lowest = min(e for e, _, _ in found)
    kept, prints = [], []
    # the start first (it stays whatever its energy), then the others lowest first
    for energy, pos, is_start in sorted(found, key=lambda item: (not item[2], item[0])):
        if not is_start and (energy - lowest > window_eV or len(kept) >= max_keep):
            continue
        x = _fingerprint(start.numbers, pos)
        if prints and min(np.sqrt(np.mean((x - y) ** 2)) for y in prints) < SAME:
            continue
        prints.append(x)
        a = Atoms(numbers=start.numbers, positions=pos)
        a.info.update(energy_eV=round(energy - lowest, 4), is_start=is_start)
        kept.append(a)
    return sorted(kept, key=lambda a: a.info["energy_eV"])
