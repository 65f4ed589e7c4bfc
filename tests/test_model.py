"""The Hamiltonian network: symmetries (rotation, inversion, translation, permutation), symmetry of F,
batching, dtypes, smoothness, and safe save/load. Small random models in float64; a few seconds."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from scipy.spatial.transform import Rotation

from ase_wavecalc.basis import BasisLayout, ao_rotation
from ase_wavecalc.model import ModelFileError, build_model, default_config, load_model, save_model
from ase_wavecalc.model.layers import WignerD, edge_frame
from ase_wavecalc.units import BOHR

MODELS = Path(__file__).resolve().parents[1] / "models"

SMALL = dict(channels=6, pair_channels=6, num_layers=2, radial_hidden=8, pair_hidden=16, pair_layers=1,
             delta_hcore_head=True)
CASES = [("def2-svp", "H2O"), ("def2-svp", "CH3CH2OH"), ("cc-pvdz", "H2O"), ("6-31g", "CH3CH2OH")]


def _randomize(model, seed=0):
    """Perturb every parameter (zero-initialized ones too: biases, core-correction head, e0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


_MODELS = {}


def _model(basis, elements=(1, 6, 8), **kw):
    key = (basis, tuple(elements), tuple(sorted(kw.items())))
    if key not in _MODELS:
        torch.manual_seed(1)
        cfg = default_config(basis=basis, elements=list(elements), **{**SMALL, **kw})
        _MODELS[key] = _randomize(build_model(cfg).double())
    return _MODELS[key]


def _mol(name, seed=0):
    atoms = molecule(name)
    rng = np.random.default_rng(seed)
    pos = atoms.positions / BOHR + 0.1 * rng.standard_normal(atoms.positions.shape)
    return torch.tensor(atoms.numbers), torch.tensor(pos, dtype=torch.float64)


def _rel(a, b):
    return float((a - b).detach().abs().max() / b.detach().abs().max())


@pytest.mark.parametrize("basis,name", CASES)
def test_rotation_and_inversion_equivariance(basis, name):
    model = _model(basis)
    z, r = _mol(name)
    out = model(z, r)
    R = Rotation.random(random_state=7).as_matrix()
    Rt = torch.tensor(R)
    rot = model(z, r @ Rt.T)
    D = ao_rotation(model.basis_layout, z.numpy(), R)
    for key in ("fock", "delta_hcore"):
        assert out[key].abs().max() > 1e-3
        assert _rel(rot[key][0], D @ out[key][0] @ D.T) < 1e-10
    inv = model(z, -(r @ Rt.T))
    Di = ao_rotation(model.basis_layout, z.numpy(), R, inversion=True)
    for key in ("fock", "delta_hcore"):
        assert _rel(inv[key][0], Di @ out[key][0] @ Di.T) < 1e-10
    assert torch.allclose(rot["atomic_energy_sum"], out["atomic_energy_sum"])


def test_translation_invariance_and_symmetric_output():
    model = _model("def2-svp")
    z, r = _mol("CH3CH2OH")
    out = model(z, r)
    moved = model(z, r + torch.tensor([3.0, -1.5, 12.0], dtype=torch.float64))
    F = out["fock"][0]
    assert _rel(moved["fock"][0], F) < 1e-12
    assert torch.equal(F, F.T)   # exact: F = (M + M^T) / 2 elementwise, and a + b == b + a in floating point
    assert torch.equal(out["delta_hcore"][0], out["delta_hcore"][0].T)


def test_atom_permutation_permutes_ao_blocks():
    model = _model("def2-svp")
    z, r = _mol("CH3CH2OH")
    perm = torch.tensor([4, 0, 8, 2, 1, 7, 3, 6, 5])
    F = model(z, r)["fock"][0]
    Fp = model(z[perm], r[perm])["fock"][0]
    slices = model.basis_layout.ao_slices(z.numpy())
    ao = torch.cat([torch.arange(slices[i].start, slices[i].stop) for i in perm.tolist()])
    assert _rel(Fp, F[ao][:, ao]) < 1e-12


def test_batch_same_composition_equals_single_calls():
    model = _model("def2-svp")
    z, r1 = _mol("CH3CH2OH", seed=1)
    _, r2 = _mol("CH3CH2OH", seed=2)
    out = model(torch.cat([z, z]), torch.cat([r1, r2]), torch.tensor([0] * 9 + [1] * 9))
    assert out["fock"].shape == (2, 72, 72)
    for b, r in enumerate((r1, r2)):
        single = model(z, r)
        for key in ("fock", "delta_hcore", "atomic_energy_sum"):
            assert _rel(out[key][b], single[key][0]) < 1e-12


def test_mixed_composition_batch_gives_lists():
    model = _model("def2-svp")
    z1, r1 = _mol("H2O")
    z2, r2 = _mol("CH3CH2OH")
    z3, r3 = torch.tensor([8]), torch.zeros(1, 3, dtype=torch.float64)  # a lone atom: no edges at all
    out = model(torch.cat([z1, z2, z3]), torch.cat([r1, r2, r3]), torch.tensor([0] * 3 + [1] * 9 + [2]))
    assert isinstance(out["fock"], list)
    assert [f.shape for f in out["fock"]] == [(24, 24), (72, 72), (14, 14)]
    assert out["atomic_energy_sum"].shape == (3,)
    for b, (z, r) in enumerate(((z1, r1), (z2, r2), (z3, r3))):
        single = model(z, r)
        assert _rel(out["fock"][b], single["fock"][0]) < 1e-12
        assert _rel(out["delta_hcore"][b], single["delta_hcore"][0]) < 1e-12


def test_float32_matches_float64_and_default_dtype_untouched():
    before = torch.get_default_dtype()
    model64 = _model("def2-svp")
    model32 = build_model(model64.config)
    assert torch.get_default_dtype() == before
    model32.load_state_dict(model64.state_dict())
    model32.float()
    z, r = _mol("H2O")
    f32 = model32(z, r.float())["fock"]
    assert f32.dtype == torch.float32
    assert _rel(f32.double(), model64(z, r)["fock"]) < 1e-4
    # float32 -> float64 restores exact constants: equivariance is float64-exact again
    model32.double()
    R = Rotation.random(random_state=3).as_matrix()
    D = ao_rotation(model32.basis_layout, z.numpy(), R)
    F = model32(z, r)["fock"][0]
    assert _rel(model32(z, r @ torch.tensor(R).T)["fock"][0], D @ F @ D.T) < 1e-10


def test_edge_frame_and_wigner_d():
    from e3nn import o3

    from ase_wavecalc.basis import float64_default

    u = torch.randn(50, 3, dtype=torch.float64)
    u[:3] = torch.tensor([[0, 1.0, 0], [0, -1.0, 0], [1.0, 0, 0]])
    u = u / u.norm(dim=-1, keepdim=True)
    Q = edge_frame(u)
    assert torch.allclose(Q[:, :, 1], u, atol=1e-14)
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    assert torch.allclose(Q @ Q.transpose(1, 2), eye, atol=1e-14)
    assert torch.allclose(torch.det(Q), torch.ones(50, dtype=torch.float64))
    Ds = WignerD(4).double()(Q)
    with float64_default():
        for l in range(5):
            ref = torch.stack([o3.Irrep(l, 1).D_from_matrix(q) for q in Q[:10]])
            assert torch.allclose(Ds[l][:10], ref, atol=1e-12)


def test_smooth_across_frame_seam_and_finite_gradients():
    """Bonds along the frame's pole (a linear molecule on the z axis) and crossing the chart seam."""
    model = _model("def2-svp")
    z = torch.tensor([8, 6, 8])
    r = torch.tensor([[0, 0, -2.2], [0, 0, 0], [0, 0, 2.2]], dtype=torch.float64, requires_grad=True)
    F = model(z, r)["fock"][0]
    (g,) = torch.autograd.grad(F.square().sum(), r)
    assert torch.isfinite(g).all()
    # e3nn's y is the physical z: tilt a bond through z = 0 (u_y changes sign, the chart switches)
    z2, base = _mol("H2O")
    outs = []
    for eps in (-1e-7, 1e-7):
        pos = base.clone()
        pos[1] = pos[0] + torch.tensor([1.8, 0.3, eps], dtype=torch.float64)
        outs.append(model(z2, pos)["fock"][0])
    assert (outs[0] - outs[1]).abs().max() < 1e-5


def test_gradient_matches_finite_differences():
    model = _model("def2-svp")
    z, r = _mol("H2O")
    r = r.clone().requires_grad_(True)
    w = torch.randn(24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def f(x):
        return (model(z, x)["fock"][0] * w).sum()

    (g,) = torch.autograd.grad(f(r), r)
    h = 1e-5
    fd = torch.zeros_like(r)
    with torch.no_grad():
        for i in range(3):
            for k in range(3):
                e = torch.zeros_like(r)
                e[i, k] = h
                fd[i, k] = (f(r + e) - f(r - e)) / (2 * h)
    assert torch.allclose(g, fd, rtol=1e-6, atol=1e-7)
    # force training differentiates the gradient again, w.r.t. the weights
    (g2,) = torch.autograd.grad(f(r), r, create_graph=True)
    grads = torch.autograd.grad(g2.square().sum(), [p for p in model.parameters() if p.requires_grad],
                                allow_unused=True)
    assert all(torch.isfinite(x).all() for x in grads if x is not None)


def test_pairs_beyond_pair_cutoff_vanish_and_unknown_element_rejected():
    model = _model("def2-svp")
    z = torch.tensor([1, 1])
    r = torch.tensor([[0, 0, 0], [0, 0, 25.0]], dtype=torch.float64)  # pair_cutoff 20 Bohr
    F = model(z, r)["fock"][0]
    assert F[:5, 5:].abs().max() == 0.0
    with pytest.raises(ValueError, match="not covered"):
        model(torch.tensor([1, 7]), r)


def test_set_mean_block_reproduces_invariant_block():
    model = build_model(default_config(**{**SMALL, "delta_hcore_head": False})).double()
    ro = model.atom_readout["8"]
    layout = BasisLayout("def2-svp", [8])
    block = torch.zeros(14, 14, dtype=torch.float64)
    block[0, 0], block[1, 1], block[0, 1], block[1, 0] = -20.0, -1.2, 0.4, 0.4
    block[3:6, 3:6] = -0.5 * torch.eye(3)
    ro.set_mean_block(block)
    with torch.no_grad():
        ro.weight.zero_()
    x = torch.randn(1, model.layout.dim, 6, dtype=torch.float64)
    got = ro(x)[0, 0].view(14, 14)
    assert torch.allclose(got, block, atol=1e-12)
    assert layout.n_ao(8) == 14


def test_save_load_roundtrip(tmp_path):
    model = _model("cc-pvdz")
    z, r = _mol("CH3CH2OH")
    ref = model(z, r)
    save_model(model, tmp_path / "m", {"name": "test", "method": "pbe"})
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert card["basis"] == "cc-pvdz" and card["elements"] == [1, 6, 8] and card["format_version"] == 2
    rng_before = torch.get_rng_state()
    loaded, card2 = load_model(tmp_path / "m")
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert card2["name"] == "test" and not loaded.training
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())   # the weights, bit for bit
    out = loaded(z, r)
    for key in ("fock", "delta_hcore", "atomic_energy_sum"):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-12, msg=key)
    loaded32, _ = load_model(tmp_path / "m", dtype=torch.float32)
    assert loaded32(z, r.float())["fock"].dtype == torch.float32


def test_load_errors(tmp_path):
    model = _model("def2-svp")
    d = save_model(model, tmp_path / "m", {})
    with pytest.raises(ModelFileError, match="no model directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelFileError, match="shipped models"):
        load_model("no-such-shipped-model")
    # corrupted weights: checksum
    w = d / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="corrupt"):
        load_model(d)
    # truncated weights without a recorded checksum: safetensors refuses, with our message
    card = json.loads((d / "model.json").read_text())
    del card["weights_sha256"]
    (d / "model.json").write_text(json.dumps(card))
    w.write_bytes(bytes(data[:100]))
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(d)
    # card inconsistent with its config
    save_model(model, d, {})
    card = json.loads((d / "model.json").read_text())
    card["elements"] = [1, 8]
    (d / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="elements"):
        load_model(d)
    (d / "model.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="JSON"):
        load_model(d)
    with pytest.raises(ValueError, match="basis"):
        save_model(model, tmp_path / "x", {"basis": "sto-3g"})


def test_card_names_each_level_of_theory_once(tmp_path):
    """A transfer model's energies come from higher-level labels than its Hamiltonian: the card says so by
    ``energy_level_of_theory`` differing from ``level_of_theory``; cards written with the old duplicate key
    ``hamiltonian_level_of_theory`` load if it agrees with ``level_of_theory`` and are refused if not."""
    from ase_wavecalc.model.io import energy_labels

    pbe = {"method": "rks", "xc": "pbe", "basis": "def2-svp"}
    cc = {"method": "CCSD(T)", "basis": "cc-pvdz"}
    assert energy_labels({"level_of_theory": pbe, "energy_level_of_theory": dict(pbe)}) == "reference"
    assert energy_labels({"level_of_theory": pbe, "energy_level_of_theory": cc}) == "high"
    assert energy_labels({"level_of_theory": pbe}) == "reference"
    d = save_model(_model("def2-svp"), tmp_path / "m", {"level_of_theory": pbe, "energy_level_of_theory": cc,
                                                         "hamiltonian_level_of_theory": dict(pbe)})
    card = load_model(d)[1]
    assert "hamiltonian_level_of_theory" not in card and energy_labels(card) == "high"
    card = json.loads((d / "model.json").read_text())
    card["hamiltonian_level_of_theory"] = cc
    (d / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="disagrees with 'level_of_theory'"):
        load_model(d)
    for name in ("water-ccsdt-transfer", "ethanol-ccsdt-transfer", "ethanol-pbe-def2svp"):
        card = json.loads((MODELS / name / "model.json").read_text())
        assert "hamiltonian_level_of_theory" not in card
        assert energy_labels(card) == ("high" if "ccsdt" in name else "reference")


def test_config_is_validated_and_json_serializable():
    with pytest.raises(ValueError, match="did you mean 'channels'"):
        build_model({"chanels": 4})
    with pytest.raises(ValueError, match="lmax"):
        build_model(default_config(lmax=2))
    # s-only basis (lmax 0): fine without an energy trunk, a clear error with one that needs L = 2
    assert build_model(default_config(basis="sto-3g", elements=[1], channels=4)).config["lmax"] == 0
    with pytest.raises(ValueError, match="energy_lmax"):
        build_model(default_config(basis="sto-3g", elements=[1], channels=4, delta_hcore_head=True,
                                   atom_correction_hidden=4, energy_layers=1))
    model = _model("def2-svp")
    assert json.loads(json.dumps(model.config)) == model.config
    assert model.config["lmax"] == 4 and model.n_parameters() > 0


def test_so2_path_basis_does_not_depend_on_the_svd_gauge():
    """The path matrices must not depend on which null-space basis LAPACK returns (it varies with the
    thread count and CPU; trained weights are tied to the basis): any rotation or sign flip of the input
    rows gives the same canonical basis."""
    from ase_wavecalc.model.so2 import _canonical_basis

    gen = torch.Generator().manual_seed(0)
    for k in (1, 2, 3):
        q, _ = torch.linalg.qr(torch.randn(9, k, generator=gen, dtype=torch.float64))
        rows = q.T
        o, _ = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
        o = o * torch.sign(torch.randn(k, generator=gen, dtype=torch.float64))   # include sign flips
        a, b = _canonical_basis(rows), _canonical_basis(o @ rows)
        assert torch.allclose(a, b, atol=1e-12)
        assert torch.allclose(a @ a.T, torch.eye(k, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(a.T @ a, rows.T @ rows, atol=1e-12)     # same span


def test_shipped_model_output_does_not_depend_on_thread_count():
    """Regression: the SO(2) path basis once came from LAPACK's arbitrary null-space gauge, which changed
    with the number of threads, so a model trained with one thread was wrong with two. The shipped water
    model must give the same F in fresh processes with 1 and 2 threads."""
    import os
    import subprocess
    import sys

    code = ("import torch; from ase_wavecalc.model.io import load_model; m, _ = load_model('water-pbe-def2svp');"
            "z = torch.tensor([8, 1, 1]); p = torch.tensor([[0., 0, 0], [1.8, 0.1, 0], [-0.5, 1.7, 0.2]]);"
            "f = m(z, p.double())['fock'][0]; print(repr(f.sum().item()), repr(f.abs().sum().item()))")
    outs = []
    for threads in ("1", "2"):
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        outs.append([float(v) for v in res.stdout.split()])
    assert np.allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)


def test_outputs_are_the_declared_keys_with_their_shapes():
    """Every key a model returns is declared in model.config.OUTPUT_KEYS, with the shape declared there."""
    from ase_wavecalc.model import OUTPUT_KEYS, build_model, default_config

    z = torch.tensor([8, 1, 1, 8, 1, 1])
    pos = torch.tensor([[0.0, 0.0, 0.2], [0.0, 1.4, -0.9], [0.0, -1.4, -0.9]], dtype=torch.float64)
    pos = torch.cat([pos, pos + torch.tensor([0.0, 0.0, 6.0], dtype=torch.float64)])
    batch = torch.tensor([0, 0, 0, 1, 1, 1])
    configs = [dict(delta_hcore_head=True, atom_correction_hidden=8),
               dict(energy_path="readout", readout_hidden=8, readout_standardize=True, committee_size=2,
                    transfer_head=True, energy_layers=1, energy_channels=4)]
    seen = set()
    for extra in configs:
        model = build_model(default_config(basis="sto-3g", elements=[1, 8], channels=4, num_layers=1, **extra))
        model = model.double()
        for energy_only in (False, True):
            if energy_only and extra.get("energy_path") != "readout":
                continue
            out = model(z, pos, batch, energy_only=energy_only)
            assert set(out) <= set(OUTPUT_KEYS), set(out) - set(OUTPUT_KEYS)
            for key, value in out.items():
                seen.add(key)
                if key in ("fock", "delta_hcore"):
                    assert value.shape == (2, 7, 7)
                elif key == "readout_inputs":
                    assert value.shape[0] == 6
                elif key == "energy_committee":
                    assert value.shape == (2, 2)
                else:
                    assert value.shape == (2,), key
    assert seen == set(OUTPUT_KEYS)
