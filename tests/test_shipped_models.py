"""The shipped models against PySCF computed here, at thermal-like geometries (not against numbers the models
wrote themselves): a change that broke the network, its weights or the energy path fails these.

Tolerances are a few times the models' held-out test errors (README table), so a working model passes
on any geometry of its training domain and a broken one does not.
"""
import numpy as np
import pytest
from ase.build import molecule

from ase_wavecalc import WaveCalculator
from ase_wavecalc.model.io import available_models
from ase_wavecalc.units import BOHR, HARTREE

CASES = {   # model: (molecule, energy tol meV, force MAE tol meV/A, F MAE tol uHa)
    "water-pbe-def2svp": ("H2O", 3.0, 8.0, 60.0),          # measured here: 0.05, 0.39, 6.8
    "ethanol-pbe-def2svp": ("CH3CH2OH", 20.0, 40.0, 400.0),  # measured here: 0.78, 6.4, 81
    # a `wavecalc fit` model: from the minimum its sampling began at (the card's fit.start)
    "malondialdehyde-pbe-def2svp": ("fit.start", 20.0, 40.0, 400.0),   # measured here: 1.6, 8.0, 95
}


def _geometry(name: str, spec: str):
    """ASE's geometry of a formula, or the minimum a `wavecalc fit` model's sampling started from."""
    if spec != "fit.start":
        return molecule(spec)
    import json

    from ase_wavecalc.fit.card import fit_start
    from ase_wavecalc.model.io import _resolve

    return fit_start(json.loads((_resolve(name) / "model.json").read_text()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_shipped_model_agrees_with_pyscf(name):
    assert name in available_models(), f"{name} is shipped with the package but not found"
    from pyscf import dft, gto

    formula, e_tol, f_tol, fock_tol = CASES[name]
    atoms = _geometry(name, formula)
    atoms.positions += np.random.default_rng(11).normal(scale=0.02, size=atoms.positions.shape)
    atoms.calc = WaveCalculator(model=name)
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    fock = atoms.calc.get_hamiltonian()

    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)], basis="def2-svp",
                unit="Angstrom", verbose=0)
    mf = dft.RKS(mol)
    mf.xc, mf.grids.level, mf.conv_tol = "pbe", 3, 1e-10
    e_ref = mf.kernel() * HARTREE
    f_ref = -mf.nuc_grad_method().kernel() * HARTREE / BOHR
    fock_ref = mf.get_fock()
    assert abs(energy - e_ref) * 1e3 < e_tol
    assert np.abs(forces - f_ref).mean() * 1e3 < f_tol
    assert np.abs(fock - fock_ref).mean() * 1e6 < fock_tol


@pytest.mark.parametrize("name", available_models())
def test_shipped_model_card_is_complete(name):
    """Every shipped card states what a user needs to trust the model (format, levels of theory, basis,
    elements, data, test metrics, energy path), its training record is in the folder, and a network that
    carries a committee has one fitted to its own energies (a threshold to warn at)."""
    import json
    from pathlib import Path

    from ase_wavecalc.model.io import _resolve

    folder = Path(_resolve(name))
    card = json.loads((folder / "model.json").read_text())
    for key in ("format_version", "level_of_theory", "basis", "elements", "datasets", "split", "test_metrics",
                "training_stages", "weights_sha256"):
        assert card.get(key), f"{name}: card lacks {key}"
    assert card["level_of_theory"]["basis"] == card["basis"]
    if card.get("energy_trained", True):
        assert card["energy_path"]["name"] in ("readout", "hamiltonian") and card.get("energy_level_of_theory")
        assert np.isfinite(card["test_metrics"]["energy_mae_mev"])
    stages = card["training_stages"]
    assert len({st["run"] for st in stages}) == len(stages), f"{name}: a training stage is listed twice"
    assert not stages[0].get("init_weights"), f"{name}: the recipe does not start from scratch"
    for st in stages:
        for file in st["files"].values():
            assert (folder / file).is_file(), f"{name}: stage {st['run']} names {file}, which is not shipped"
    if int(card["config"].get("committee_size") or 0) > 0:
        assert card.get("committee", {}).get("energy_std_warning_mev", 0) > 0, (
            f"{name}: the network carries a committee that was never fitted to its energies")
