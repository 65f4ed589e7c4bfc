"""Invariant descriptors of the density matrix (design 2 of the energy paths, a rejected design kept beside its
benchmark in benchmarks/_density_functional.py): checked on PySCF densities."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pyscf import gto, scf
from scipy.spatial.transform import Rotation

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _density_functional import DensityDescriptors, DensityFunctional  # noqa: E402

WATER = np.array([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.79, -0.45]])   # Angstrom, not symmetric


def hf_density(numbers, positions_A):
    mol = gto.M(atom=[(int(z), p) for z, p in zip(numbers, positions_A)], basis="def2-svp", verbose=0)
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-13
    mf.kernel()
    assert mf.converged
    return torch.tensor(mf.make_rdm1())


def test_descriptors_are_rotation_invariant_and_permutation_equivariant():
    numbers = [8, 1, 1]
    desc = DensityDescriptors("def2-svp", [1, 8])
    d0 = desc(numbers, hf_density(numbers, WATER))
    rot = Rotation.from_euler("zyx", [0.7, -1.1, 2.3]).as_matrix()
    d_rot = desc(numbers, hf_density(numbers, WATER @ rot.T + [0.3, -0.2, 1.0]))
    assert torch.allclose(d_rot, d0, rtol=1e-6, atol=1e-8)
    swapped = desc([8, 1, 1], hf_density(numbers, WATER[[0, 2, 1]]))
    assert torch.allclose(swapped, d0[[0, 2, 1]], rtol=1e-6, atol=1e-8)
    # they do see the geometry: a stretched bond changes the descriptors of its atoms
    stretched = WATER.copy()
    stretched[1] *= 1.05
    d_str = desc(numbers, hf_density(numbers, stretched))
    assert (d_str[1] - d0[1]).abs().max() > 1e-3


def test_padding_and_bad_input():
    desc = DensityDescriptors("def2-svp", [1, 8])
    numbers = [8, 1, 1]
    d = desc(numbers, hf_density(numbers, WATER))
    n_h = desc.lengths[1]
    assert n_h < desc.n_features == desc.lengths[8]
    assert torch.all(d[1:, n_h:] == 0) and torch.all(d[1:, :n_h].abs().sum(1) > 0)
    with pytest.raises(ValueError, match="elements"):
        desc([6, 1, 1, 1, 1], torch.zeros(34, 34))
    with pytest.raises(ValueError, match="AOs"):
        desc(numbers, torch.zeros(10, 10))


def test_functional_gradient_with_respect_to_the_density():
    """The learned functional is a smooth function of P: its autograd gradient equals finite differences."""
    numbers = [8, 1, 1]
    dm = hf_density(numbers, WATER)
    torch.manual_seed(0)
    f = DensityFunctional("def2-svp", [1, 8], hidden=16)
    for p in f.mlp.parameters():
        torch.nn.init.normal_(p, std=0.3)
    torch.nn.init.normal_(f.linear, std=0.1)
    x = dm.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(numbers, x), x)
    direction = torch.randn_like(dm)
    direction = direction + direction.T
    h = 1e-5
    fd = (f(numbers, dm + h * direction) - f(numbers, dm - h * direction)) / (2 * h)
    assert torch.allclose((g * direction).sum(), fd, rtol=1e-6, atol=1e-10)
