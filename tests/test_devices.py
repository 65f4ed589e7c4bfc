"""Devices (issue #22): where the network runs (``device=``; ``wavecalc train/fit --device``).

CPU only in CI: device="cpu" given explicitly equals the default; "cuda" on a machine without CUDA and an
unknown device string are refused at construction with the message that says so (calculator: InputError;
CLI: one line, exit 2). The ``gpu`` test runs a shipped model on CUDA against the CPU (skipped without a GPU).
"""
import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.calculator import InputError

from ase_wavecalc import WaveCalculator, cli
from ase_wavecalc.devices import DeviceError, resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
MODEL = "water-pbe-def2svp"


def _results(**kw):
    atoms = molecule("H2O")
    atoms.positions[0, 0] += 0.05
    atoms.calc = WaveCalculator(model=MODEL, **kw)
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.calc


def test_resolve_device_accepts_cpu_spellings():
    for d in (None, "cpu", "CPU", " cpu ", torch.device("cpu")):
        assert resolve_device(d) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["bogus", "gpu", "mps", "cuda:x", 3])
def test_unknown_devices_are_refused(bad):
    with pytest.raises(DeviceError, match="device"):
        resolve_device(bad)
    with pytest.raises(InputError, match="device"):
        WaveCalculator(model=MODEL, device=bad)


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_a_gpu_is_refused_at_construction(device):
    with pytest.raises(InputError, match=r"torch.cuda.is_available\(\) is False.*use device='cpu'"):
        WaveCalculator(model=MODEL, device=device)
    calc = WaveCalculator(model=MODEL)
    with pytest.raises(InputError, match="no CUDA GPU"):
        calc.set(device=device)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        from ase_wavecalc.providers import ModelProvider
        ModelProvider(MODEL, device=device)


@pytest.mark.parametrize("fast", ["float32", None])
def test_explicit_cpu_equals_the_default(fast):
    e0, f0, _ = _results(fast=fast)
    e1, f1, calc = _results(fast=fast, device="cpu")
    assert e1 == pytest.approx(e0, abs=1e-9) and np.allclose(f1, f0, rtol=0, atol=1e-9)   # eV, eV/A
    assert calc.provider.describe()["device"] == "cpu"
    e2, f2, _ = _results(fast=fast, device=torch.device("cpu"))
    assert e2 == pytest.approx(e0, abs=1e-9) and np.allclose(f2, f0, rtol=0, atol=1e-9)


def test_explicit_cpu_keeps_orbitals_and_hessian():
    atoms = molecule("H2O")
    atoms.calc = WaveCalculator(model=MODEL, device="cpu")
    ref = molecule("H2O")
    ref.calc = WaveCalculator(model=MODEL)
    atoms.get_potential_energy(), ref.get_potential_energy()
    assert np.allclose(atoms.calc.get_eigenvalues(), ref.calc.get_eigenvalues(), rtol=0, atol=1e-9)
    assert np.allclose(atoms.calc.get_hessian(atoms), ref.calc.get_hessian(ref), rtol=0, atol=1e-8)


@no_cuda
@pytest.mark.parametrize("command", ["train", "fit"])
def test_cli_device_cuda_without_gpu_exits_2_in_one_line(command, tmp_path, capsys):
    args = (["train", str(tmp_path / "missing.toml"), "--device", "cuda"] if command == "train" else
            ["fit", "H2O", "--out", str(tmp_path / "m"), "--device", "cuda"])
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"wavecalc {command}: error: device='cuda' was asked for but torch.cuda.is_available() "
                          "is False")
    assert not (tmp_path / "m").exists() and not (tmp_path / "m.work").exists()


def test_cli_bogus_device_exits_2(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "missing.toml"), "--device", "tpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown device 'tpu'" in err


def test_batches_move_and_stay_put():
    from ase_wavecalc.train.data import Batch

    t = torch.zeros(2, 2)
    b = Batch(numbers=torch.tensor([1, 1]), positions_bohr=torch.zeros(2, 3), batch=torch.zeros(2, dtype=torch.long),
              fock=t, overlap=t, mo_energy=torch.zeros(2), frame=torch.tensor([0]), n_occ=1, ao_atom=torch.zeros(2))
    assert b.to("cpu") is b


def test_fast_path_per_call_work_stays_on_its_device():
    """The fast path's constants built on the CPU and moved to the "meta" device (shapes only): a CPU tensor
    left in any per-call operation would raise (as it would on CUDA); CPU positions are moved in."""
    from ase_wavecalc.model.fast import FastReadoutEnergy
    from ase_wavecalc.providers import ModelProvider
    from ase_wavecalc.units import BOHR

    atoms = molecule("CH3CH2OH")
    model = ModelProvider("ethanol-pbe-def2svp").model
    for dtype in (torch.float32, torch.float64):
        fast = FastReadoutEnergy(model, atoms.numbers, dtype, device="meta")
        energy, _ = fast(torch.tensor(atoms.positions / BOHR, requires_grad=True))
        assert energy.device.type == "meta" and energy.dtype == torch.float64 and energy.shape == ()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["ethanol-pbe-def2svp", "ethanol-pbe-def2svp-hamiltonian"])
def test_shipped_model_on_cuda_equals_cpu(model):
    """Energy and forces on cuda equal the CPU's to 1e-6 eV (eV/A), float64 network and fast path."""
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.02, atoms.positions.shape)
    out = {}
    for device in ("cpu", "cuda"):
        a = atoms.copy()
        a.calc = WaveCalculator(model=model, device=device, fast="float64")
        energy, forces = a.get_potential_energy(), a.get_forces()
        out[device] = (energy, forces, a.calc.get_eigenvalues())
        assert isinstance(out[device][0], float) and out[device][1].dtype == np.float64
    assert abs(out["cuda"][0] - out["cpu"][0]) < 1e-6
    assert np.abs(out["cuda"][1] - out["cpu"][1]).max() < 1e-6
    assert np.abs(out["cuda"][2] - out["cpu"][2]).max() < 1e-5


def test_trainer_on_explicit_cpu_equals_the_default(water_db, tmp_path):
    """Trainer(device="cpu") moves model and batches to where they already are: the same run, bit for bit."""
    from _train_helpers import build_stand_in, make_config, quiet

    from ase_wavecalc.train.checkpoint import load_checkpoint
    from ase_wavecalc.train.trainer import Trainer

    states = []
    for name, kw in (("default", {}), ("cpu", {"device": "cpu"})):
        Trainer(make_config(water_db, max_epochs=2), tmp_path / name, build_model=build_stand_in, log=quiet,
                **kw).fit()
        states.append(load_checkpoint(tmp_path / name / "checkpoint.pt")["model"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.allclose(states[0][k], states[1][k], rtol=0, atol=1e-10) for k in states[0])
    with pytest.raises(DeviceError):
        Trainer(make_config(water_db, max_epochs=1), tmp_path / "bad", build_model=build_stand_in, device="tpu")
