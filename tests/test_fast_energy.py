"""The fast energy+forces path of readout models (``model/fast.py``, issue #22): the same function as the
eager network, built once per molecule.

Checked on small random readout models (with and without an energy trunk, with a committee and a transfer
head): energies, forces and committee energies equal the eager network's (float64: to rounding, float32:
within a stated tolerance), the fast forces are the gradient of the fast energy (finite differences), the
calculator uses the fast path by default and the eager one when switched off or for a Hamiltonian-path
model, a new composition or weights changed in place give a new instance, and F, the Hessian and
forces_std still come from the eager network. No wall times, no bit patterns.
"""
import numpy as np
import pytest
import torch
from ase.build import molecule

from ase_wavecalc import WaveCalculator
from ase_wavecalc.model.fast import FastPath, FastReadoutEnergy, fast_mode, supported
from ase_wavecalc.model.network import build_model, default_config
from ase_wavecalc.providers import ModelProvider
from ase_wavecalc.units import BOHR, HARTREE

BASIS = "sto-3g"
# float32 against float64 (Hartree, Hartree/Bohr), for these unit-scale random models: a stated bound, far
# below any model's error (the shipped ethanol model: 1e-3 meV and 0.01 meV/A, benchmarks/speed_fast.py)
F32_ENERGY_TOL, F32_GRAD_TOL = 2e-5, 2e-5


def _model(seed=0, energy_layers=1, committee_size=3, transfer_head=True, lmax=None):
    torch.manual_seed(seed)
    extra = {} if lmax is None else {"lmax": lmax}
    net = build_model(default_config(basis=BASIS, elements=[1, 6, 8], channels=4, num_layers=3,
                                     pair_channels=4, radial_hidden=8, pair_hidden=8, energy_path="readout",
                                     readout_hidden=8, energy_layers=energy_layers, energy_channels=4,
                                     committee_size=committee_size, transfer_head=transfer_head,
                                     readout_standardize=True, **extra))
    with torch.no_grad():   # non-zero readouts (their last layers start at zero), offsets, standardization
        net.readout_mlp[-1].weight.normal_(0.0, 1.0)
        net.readout_mlp[-1].bias.normal_(0.0, 1.0)
        for m in net.committee_mlps or []:
            m[-1].weight.normal_(0.0, 1.0)
        if net.transfer_weight is not None:
            net.transfer_weight.normal_(0.0, 1e-3)
        net.readout_norm.shift.normal_(0.0, 0.1)
        net.readout_norm.scale.uniform_(0.5, 2.0)
        net.element_energy_offsets.uniform_(-0.5, 0.5)
        for ro in net.pair_readout.values():
            ro.weight.mul_(0.01)
    return net.double().eval()


def _geometries(name="CH3CH2OH", n=3, scale=0.08):
    atoms = molecule(name)
    rng = np.random.default_rng(1)
    return atoms.numbers, [atoms.positions / BOHR + rng.normal(scale=scale, size=atoms.positions.shape)
                           for _ in range(n)]


def _eager(net, numbers, pos):
    p = torch.tensor(pos, requires_grad=True)
    out = net(torch.as_tensor(numbers), p, None, energy_only=True)
    e = out["energy"].sum()
    (g,) = torch.autograd.grad(e, p)
    committee = out.get("energy_committee")
    return float(e.detach()), g.numpy(), None if committee is None else committee.detach().reshape(-1).numpy()


@pytest.mark.parametrize("energy_layers", [0, 1], ids=["fock-trunk", "with-energy-trunk"])
@pytest.mark.parametrize("mode", ["float64", "float32"])
def test_fast_path_equals_eager(energy_layers, mode):
    net = _model(energy_layers=energy_layers)
    path = FastPath(net, mode)
    numbers, geometries = _geometries()
    etol, gtol = (1e-10, 1e-10) if mode == "float64" else (F32_ENERGY_TOL, F32_GRAD_TOL)
    for pos in geometries:
        e0, g0, c0 = _eager(net, numbers, pos)
        e1, g1, c1 = path.compute(numbers, pos, True)
        assert abs(e1 - e0) < etol
        assert np.abs(g1 - g0).max() < gtol
        assert np.abs(c1 - c0).max() < etol
    assert path.n_built == 1          # one molecule: built once


def test_fast_forces_are_the_gradient_of_the_fast_energy():
    net = _model()
    path = FastPath(net, "float64")
    numbers, (pos,) = _geometries(n=1)
    _, grad, _ = path.compute(numbers, pos, True)
    h = 1e-4
    fd = np.zeros_like(pos)
    for a in range(len(pos)):
        for x in range(3):
            e = []
            for k in (-1, 1):
                trial = pos.copy()
                trial[a, x] += k * h
                e.append(path.compute(numbers, trial, False)[0])
            fd[a, x] = (e[1] - e[0]) / (2 * h)
    assert np.abs(fd - grad).max() < 1e-6 * max(1.0, np.abs(grad).max())


def test_calculator_default_is_the_float32_fast_path():
    from ase_wavecalc.calculator import WaveCalculator as WC

    assert WC.default_parameters["fast"] == "float32" and WC.default_parameters["compile"] is False
    calc = WaveCalculator(model="water-pbe-def2svp")
    assert calc.provider.fast.available and calc.provider.fast.mode == "float32"
    assert WaveCalculator(model="water-pbe-def2svp", fast=None).provider.fast.available is False
    assert ModelProvider(_model()).fast.mode == "float64"      # the provider's own default: exact


def test_float32_calculator_agrees_with_eager():
    net = _model()
    numbers, geometries = _geometries(n=2)
    fast = WaveCalculator(provider=ModelProvider(net, card={"name": "random"}, fast="float32"))
    eager = WaveCalculator(provider=ModelProvider(net, card={"name": "random"}, fast=None))
    assert fast.provider.fast.available and fast.provider.fast.mode == "float32"
    assert not eager.provider.fast.available
    for pos in geometries:
        atoms = molecule("CH3CH2OH")
        atoms.positions = pos * BOHR
        a1, a2 = atoms.copy(), atoms.copy()
        a1.calc, a2.calc = fast, eager
        # eV and eV/Angstrom: the float32 bounds above times the unit conversions
        assert abs(a1.get_potential_energy() - a2.get_potential_energy()) < HARTREE * F32_ENERGY_TOL
        assert np.abs(a1.get_forces() - a2.get_forces()).max() < HARTREE / BOHR * F32_GRAD_TOL
        assert fast.provider.compute(numbers, pos).info["fast"] == "float32"
        assert abs(fast.get_property("energy_std", a1) - eager.get_property("energy_std", a2)) < 1e-3
        # forces_std, F and the Hessian come from the eager network in both
        np.testing.assert_allclose(fast.get_property("forces_std", a1), eager.get_property("forces_std", a2),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fast.get_hamiltonian(), eager.get_hamiltonian(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fast.get_hessian(a1), eager.get_hessian(a2), rtol=1e-10, atol=1e-10)


def test_new_composition_and_changed_weights_rebuild():
    net = _model()
    path = FastPath(net, "float64")
    numbers, (pos,) = _geometries(n=1)
    e_before = path.compute(numbers, pos, False)[0]
    w_numbers, (w_pos,) = _geometries("H2O", n=1)
    assert abs(path.compute(w_numbers, w_pos, False)[0] - _eager(net, w_numbers, w_pos)[0]) < 1e-10
    assert path.n_built == 2
    path.compute(numbers, pos, False)
    assert path.n_built == 2          # both kept
    with torch.no_grad():
        net.readout_mlp[0].bias.add_(0.1)
    e_after = path.compute(numbers, pos, False)[0]
    assert path.n_built == 3 and abs(e_after - e_before) > 1e-6
    assert abs(e_after - _eager(net, numbers, pos)[0]) < 1e-10


def test_fallbacks_and_settings():
    # a Hamiltonian-path model has no fast path: the calculator falls back to the eager network
    torch.manual_seed(0)
    ham = build_model(default_config(basis=BASIS, elements=[1, 8], channels=4, num_layers=1, pair_channels=4,
                                     radial_hidden=8, pair_hidden=8)).double()
    ok, why = supported(ham)
    assert not ok and "readout" in why
    assert FastPath(ham, "float32").compute([8, 1, 1], np.eye(3), True) is None
    with pytest.raises(ValueError):
        FastReadoutEnergy(ham, [8, 1, 1])
    assert fast_mode(True) == "float32" and fast_mode(False) is None and fast_mode("off") is None
    with pytest.raises(ValueError):
        fast_mode("float16")
    from ase.calculators.calculator import InputError

    with pytest.raises(InputError):
        WaveCalculator(model="water-pbe-def2svp", fast="float16").provider
    numbers, (pos,) = _geometries(n=1)
    pos[1] = pos[0]
    with pytest.raises(ValueError, match="coincide"):
        FastPath(_model(), "float64").compute(numbers, pos, True)


# ---- torch.compile of the fast path (model/compiled.py): the policy with a stand-in compiler (no minutes of
# inductor in the default run); one real compilation under the "long" marker


def _fake_compile(shift=0.0):
    """A stand-in for torch.compile: the function itself, its energy moved by ``shift`` Hartree."""
    def compile_(fn, **kwargs):
        def compiled(pos):
            e, c = fn(pos)
            return e + shift, c
        compiled.stand_in = True
        return compiled
    return compile_


def test_compile_auto_starts_after_many_calls_and_is_then_used(monkeypatch):
    from ase_wavecalc.model import compiled as compiled_mod

    monkeypatch.setattr(compiled_mod, "AUTO_AFTER", 3)
    monkeypatch.setattr(compiled_mod, "compile_available", lambda: (True, ""))
    monkeypatch.setattr(torch, "compile", _fake_compile())
    net = _model()
    path = FastPath(net, "float64", compile="auto")
    numbers, geometries = _geometries(n=5)
    for k, pos in enumerate(geometries):
        e, g, _ = path.compute(numbers, pos, True)
        e0, g0, _ = _eager(net, numbers, pos)
        assert abs(e - e0) < 1e-10 and np.abs(g - g0).max() < 1e-10
        if k == 2:
            path._compiler.wait(60)
    ready = path.compiled(numbers)
    assert ready is not None and getattr(ready._fn, "stand_in", False)
    assert ready.check["energy"] < 1e-12
    # energy-only calls stay uncompiled (the compiled graph is for autograd on); changed weights drop the
    # compiled graph of the old ones, and the count starts again
    calls = []
    monkeypatch.setattr(ready, "_fn", lambda pos: calls.append(1) or ready.fast(pos))
    path.compute(numbers, geometries[0], False)
    assert calls == []
    path.compute(numbers, geometries[0], True)
    assert calls == [1]
    with torch.no_grad():
        net.readout_mlp[0].bias.add_(0.1)
    e, _, _ = path.compute(numbers, geometries[0], True)
    assert path.compiled(numbers) is None and len(path._compiler.ready) == 0
    assert abs(e - _eager(net, numbers, geometries[0])[0]) < 1e-10


def test_a_compiled_graph_that_disagrees_is_never_used(monkeypatch):
    from ase_wavecalc.model import compiled as compiled_mod

    monkeypatch.setattr(compiled_mod, "compile_available", lambda: (True, ""))
    monkeypatch.setattr(torch, "compile", _fake_compile(shift=1e-3))
    net = _model()
    path = FastPath(net, "float64", compile=True)
    numbers, (pos,) = _geometries(n=1)
    with pytest.warns(RuntimeWarning, match="differs from the uncompiled"):
        e, _, _ = path.compute(numbers, pos, True)
    assert path.compiled(numbers) is None
    assert abs(e - _eager(net, numbers, pos)[0]) < 1e-10
    path.compute(numbers, pos, True)      # no second attempt, no second warning


def test_no_compiler_falls_back(monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    net = _model()
    path = FastPath(net, "float64", compile=True)
    numbers, (pos,) = _geometries(n=1)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ compiler"):
        e, _, _ = path.compute(numbers, pos, True)
    assert abs(e - _eager(net, numbers, pos)[0]) < 1e-10


@pytest.mark.long
def test_real_compilation_agrees_with_eager():
    """torch.compile with inductor (minutes on 2 cores): the compiled float32 path against eager float64."""
    net = _model()
    path = FastPath(net, "float32", compile=True)
    numbers, geometries = _geometries(n=3)
    for pos in geometries:
        e1, g1, c1 = path.compute(numbers, pos, True)
        e0, g0, c0 = _eager(net, numbers, pos)
        assert abs(e1 - e0) < F32_ENERGY_TOL and np.abs(g1 - g0).max() < F32_GRAD_TOL
        assert np.abs(c1 - c0).max() < F32_ENERGY_TOL
    assert path.compiled(numbers) is not None
