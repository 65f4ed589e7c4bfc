"""Names of earlier versions of the energy parts still load: config keys (``energy_head``,
``atom_energy_hidden``), parameter names (``atom_energy_offsets``, ``atom_energy_mlp.*``) and
``run.trainable`` values (``energy_head``, ``energy_correction``), mapped to their names now."""
import json
from pathlib import Path

import pytest
import torch

from ase_wavecalc.model import (build_model, canonical_config, canonical_state_dict, default_config,
                                load_model, save_model)
from ase_wavecalc.model.io import ModelFileError

SMALL = dict(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1, pair_channels=4, radial_hidden=8,
             pair_hidden=8, energy_layers=1, energy_channels=4)
OLD = {**SMALL, "energy_head": True, "atom_energy_hidden": 8}
NEW = {**SMALL, "delta_hcore_head": True, "atom_correction_hidden": 8}
NUMBERS = torch.tensor([8, 1, 1])
POSITIONS = torch.tensor([[0.0, 0.0, 0.0], [1.8, 0.0, 0.0], [-0.4, 1.7, 0.0]], dtype=torch.float64)


def _old_names(state: dict) -> dict:
    """A state_dict as an earlier version wrote it."""
    return {k.replace("element_energy_offsets", "atom_energy_offsets").replace("atom_correction_mlp.",
                                                                                "atom_energy_mlp."): v
            for k, v in state.items()}


def _model(config):
    torch.manual_seed(0)
    model = build_model(config).double()
    with torch.no_grad():   # the correction MLP and e0 start at zero: make them matter
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


def _assert_same_outputs(a, b):
    with torch.no_grad():
        out_a, out_b = a(NUMBERS, POSITIONS, None), b(NUMBERS, POSITIONS, None)
    assert set(out_a) == set(out_b) == {"fock", "delta_hcore", "atomic_energy_sum", "learned_energy"}
    for key in out_a:
        torch.testing.assert_close(out_a[key], out_b[key], rtol=0, atol=1e-12, msg=key)
    assert float(out_a["learned_energy"].abs().sum()) > 0


def test_old_config_keys_build_the_same_architecture():
    torch.manual_seed(0)
    old = build_model(OLD)
    torch.manual_seed(0)
    new = build_model(NEW)
    assert old.config == new.config
    assert "energy_head" not in old.config and old.config["delta_hcore_head"] is True
    assert old.config["atom_correction_hidden"] == 8 and old.heads == 2
    assert default_config(**OLD) == default_config(**NEW)
    sa, sb = old.state_dict(), new.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert "element_energy_offsets" in sa and any(k.startswith("atom_correction_mlp.") for k in sa)


def test_state_dict_with_old_parameter_names_loads(tmp_path):
    model = _model(NEW)
    old_state = _old_names(model.state_dict())
    assert "atom_energy_offsets" in old_state and "element_energy_offsets" not in old_state
    fresh = build_model(OLD).double().eval()
    fresh.load_state_dict(old_state, strict=True)       # also resumes and EMA shadows of old checkpoints
    _assert_same_outputs(model, fresh)
    # a model directory as an earlier version wrote it: old config keys in the card, old tensor names
    save_model(model, tmp_path / "m")
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in old_state.items()}, str(tmp_path / "m" / "weights.safetensors"))
    card["config"] = {("energy_head" if k == "delta_hcore_head" else
                       "atom_energy_hidden" if k == "atom_correction_hidden" else k): v
                      for k, v in card["config"].items()}
    card.pop("weights_sha256")
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    loaded, _ = load_model(tmp_path / "m")
    _assert_same_outputs(model, loaded)
    from ase_wavecalc.train.checkpoint import initial_weights

    assert set(initial_weights(tmp_path / "m")) == set(model.state_dict())


def test_old_and_new_name_with_different_values_is_an_error(tmp_path):
    from ase_wavecalc.train.config import ConfigError, parse_config

    clash = {**NEW, "energy_head": False}
    message = "'energy_head' = False and its new name 'delta_hcore_head' = True"
    for make in (lambda: canonical_config(clash), lambda: default_config(**clash),
                 lambda: build_model(clash)):
        with pytest.raises(ValueError, match=message):
            make()
    assert canonical_config({**NEW, "energy_head": True}) == NEW      # the same value twice is fine
    data = {"datasets": [{"path": "x", "train": 1}]}
    with pytest.raises(ConfigError, match="atom_energy_hidden"):
        parse_config({"data": data, "model": {"atom_energy_hidden": 4, "atom_correction_hidden": 8}})
    state = _model(NEW).state_dict()
    both = {**state, "atom_energy_offsets": state["element_energy_offsets"].clone()}
    with pytest.raises(ValueError, match="both 'atom_energy_offsets' and its new name"):
        canonical_state_dict(both)
    save_model(_model(NEW), tmp_path / "m")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in both.items()}, str(tmp_path / "m" / "weights.safetensors"))
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    card.pop("weights_sha256")
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="new name"):
        load_model(tmp_path / "m")


def test_old_trainable_values_and_model_keys_in_train_configs():
    from ase_wavecalc.train.config import ConfigError, parse_config

    data = {"datasets": [{"path": "x", "train": 1}]}
    for old, new in (("energy_head", "delta_hcore_head"), ("energy_correction", "atom_correction")):
        cfg = parse_config({"data": data, "model": {"energy_head": True, "atom_energy_hidden": 4},
                            "run": {"trainable": old}})
        assert cfg.run.trainable == new
        assert cfg.model == {"delta_hcore_head": True, "atom_correction_hidden": 4}
    with pytest.raises(ConfigError, match="run.trainable must be"):
        parse_config({"data": data, "run": {"trainable": "energy_heads"}})
    # optimizer.lr_by_prefix names parameters: their old names too
    cfg = parse_config({"data": data, "optimizer": {"lr_by_prefix": {"atom_energy_mlp.": 1e-3,
                                                                     "atom_energy_offsets": 1e-2}}})
    assert cfg.optimizer.lr_by_prefix == {"atom_correction_mlp.": 1e-3, "element_energy_offsets": 1e-2}


def test_shipped_model_with_old_names_loads_under_the_new_ones():
    card = json.loads((Path(__file__).parents[1] / "models" / "water-pbe-def2svp-hamiltonian" / "model.json")
                      .read_text())
    assert card["config"]["energy_head"] is True          # written before the rename, not edited
    model, _ = load_model("water-pbe-def2svp-hamiltonian")
    assert model.config["delta_hcore_head"] is True and "energy_head" not in model.config
    assert model.config["atom_correction_hidden"] == card["config"]["atom_energy_hidden"]
    assert model.atom_correction_mlp is not None and model.element_energy_offsets.abs().sum() > 0
