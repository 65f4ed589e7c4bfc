"""Per-element layout of a PySCF Gaussian basis, and where PySCF's AO order meets e3nn's.

This module is the only place that knows both orders. Everything outside the network is in PySCF's
spherical AO order (``cart=False``):

* atoms in input order; within an atom, shells sorted by angular momentum l (PySCF sorts them even
  when a basis file lists them unsorted), then by exponent (large to small);
* a shell with several general contractions (cc-pVDZ) holds one full set of 2l+1 functions per
  contraction, contraction index outer, m inner;
* within a set: p is (x, y, z); d is (xy, yz, z^2, xz, x^2-y^2), i.e. m = -2..2; f and higher m = -l..l.

e3nn's real spherical harmonics evaluated at (y, z, x) reproduce PySCF's angular functions with the same
m order and signs for every l except l = 1, where e3nn's three components are PySCF's p indices [1, 2, 0]
(y, z, x). So the network is fed coordinates as ``r[..., [1, 2, 0]]`` and its l = 1 outputs are permuted
by :meth:`BasisLayout.e3nn_to_pyscf`.

| object | meaning | shape / type |
|---|---|---|
| ``Shell(l, index)`` | one contracted radial function with angular momentum l | per element, PySCF order |
| ``BasisLayout.irreps(Z)`` | e3nn irreps of an atom's AO block, parity (-1)^l | ``o3.Irreps`` |
| ``BasisLayout.e3nn_to_pyscf(Z)`` | ``pyscf_vec[perm] = e3nn_vec`` | ``LongTensor (n_ao,)`` |
| ``ao_rotation(layout, numbers, R)`` | D with ``M(R r) = D M(r) D^T`` | ``Tensor (nao, nao)`` float64 |
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["Shell", "BasisLayout", "ao_rotation", "element_shells", "float64_default"]

# e3nn's l = 1 component k is PySCF's p index P1[k]
_P1 = (1, 2, 0)


@dataclass(frozen=True)
class Shell:
    """One contracted set of 2l+1 spherical Gaussians on an atom.

    l: angular momentum; ``index``: position among the element's contracted functions of the same l
    (0 = the tightest), useful for naming (e.g. ``2p`` -> l=1, index=1).
    """

    l: int
    index: int

    @property
    def n_ao(self) -> int:
        return 2 * self.l + 1


@contextlib.contextmanager
def float64_default():
    """Temporarily make float64 torch's default dtype (e3nn builds its constants in the default dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@functools.lru_cache(maxsize=None)
def element_shells(basis: str, z: int) -> tuple[Shell, ...]:
    """Contracted shells of element ``z`` in ``basis``, in PySCF AO order.

    Built from a one-atom PySCF molecule, so any basis name PySCF knows works (STO-3G, 6-31G,
    def2-SVP, cc-pVDZ with its general contractions, ...). Raises ``ValueError`` naming the element
    and basis when PySCF has no functions for it.
    """
    from pyscf import gto
    from pyscf.data.elements import ELEMENTS

    z = int(z)
    if not 1 <= z < len(ELEMENTS):
        raise ValueError(f"atomic number {z} is not a chemical element")
    symbol = ELEMENTS[z]
    mol = gto.Mole()
    mol.atom = [(symbol, (0.0, 0.0, 0.0))]
    mol.basis = basis
    mol.spin = z % 2
    mol.symmetry = False
    mol.cart = False
    mol.verbose = 0
    try:
        mol.build(parse_arg=False, dump_input=False)
    except Exception as exc:  # PySCF raises KeyError/RuntimeError/BasisNotFoundError
        raise ValueError(f"basis {basis!r} has no functions for element {symbol} (Z={z}): {exc}") from exc
    if mol.nbas == 0:
        raise ValueError(f"basis {basis!r} has no functions for element {symbol} (Z={z})")
    shells = []
    count: dict[int, int] = {}
    for ib in range(mol.nbas):
        l = int(mol.bas_angular(ib))
        for _ in range(int(mol.bas_nctr(ib))):
            shells.append(Shell(l, count.get(l, 0)))
            count[l] = count.get(l, 0) + 1
    n_ao = sum(s.n_ao for s in shells)
    if n_ao != mol.nao:
        raise RuntimeError(f"shell layout of {symbol}/{basis} gives {n_ao} AOs, PySCF has {mol.nao}")
    return tuple(shells)


class BasisLayout:
    """Shell structure of a basis for a set of elements, and AO bookkeeping for molecules.

    Parameters
    ----------
    basis: a PySCF basis name (e.g. ``"def2-svp"``, ``"cc-pvdz"``, ``"6-31g"``, ``"sto-3g"``).
    elements: atomic numbers the layout covers; molecules with other elements are rejected.
    """

    def __init__(self, basis: str, elements: Iterable[int]):
        self.basis = str(basis)
        self.elements = tuple(sorted({int(z) for z in elements}))
        if not self.elements:
            raise ValueError("BasisLayout needs at least one element")
        self._shells = {z: element_shells(self.basis, z) for z in self.elements}

    def __repr__(self) -> str:
        return f"BasisLayout({self.basis!r}, elements={list(self.elements)})"

    # ---- per element -------------------------------------------------------------------------
    def _check(self, z: int) -> int:
        z = int(z)
        if z not in self._shells:
            raise ValueError(f"element Z={z} is not in this basis layout (elements {list(self.elements)})")
        return z

    def shells(self, z: int) -> tuple[Shell, ...]:
        """Contracted shells of element ``z`` in PySCF order."""
        return self._shells[self._check(z)]

    def n_ao(self, z: int) -> int:
        """Number of spherical AOs on one atom of element ``z``."""
        return sum(s.n_ao for s in self.shells(z))

    @property
    def max_l(self) -> int:
        """Highest angular momentum over all elements of the layout."""
        return max(s.l for z in self.elements for s in self._shells[z])

    def irreps(self, z: int):
        """e3nn irreps of the AO block of element ``z`` (in AO order), e.g. ``3x0e+2x1o+1x2e``."""
        from e3nn import o3

        return o3.Irreps([(1, (s.l, (-1) ** s.l)) for s in self.shells(z)]).simplify()

    def shell_offsets(self, z: int) -> list[int]:
        """Offset of each shell's first AO within the atom's AO block."""
        offsets, o = [], 0
        for s in self.shells(z):
            offsets.append(o)
            o += s.n_ao
        return offsets

    def e3nn_to_pyscf(self, z: int) -> torch.Tensor:
        """Permutation ``perm`` (n_ao,) with ``pyscf_vec[perm] = e3nn_vec`` for one atom of element z.

        Equivalently ``pyscf_block = e3nn_block[inv][:, inv]`` with ``inv = perm.argsort()``, or
        ``pyscf_block[perm[:, None], perm] = e3nn_block``.
        """
        perm = []
        for s, o in zip(self.shells(z), self.shell_offsets(z)):
            if s.l == 1:
                perm.extend(o + k for k in _P1)
            else:
                perm.extend(range(o, o + s.n_ao))
        return torch.tensor(perm, dtype=torch.long)

    # ---- per molecule ------------------------------------------------------------------------
    def nao(self, numbers: Sequence[int]) -> int:
        """Total number of AOs of a molecule."""
        return sum(self.n_ao(z) for z in np.asarray(numbers).reshape(-1))

    def ao_slices(self, numbers: Sequence[int]) -> list[slice]:
        """AO range of each atom in the molecule's PySCF AO order."""
        slices, o = [], 0
        for z in np.asarray(numbers).reshape(-1):
            n = self.n_ao(z)
            slices.append(slice(o, o + n))
            o += n
        return slices

    def ao_atom(self, numbers: Sequence[int]) -> torch.Tensor:
        """Atom index of every AO, LongTensor (nao,)."""
        return torch.cat([torch.full((s.stop - s.start,), i, dtype=torch.long)
                          for i, s in enumerate(self.ao_slices(numbers))])

    def ao_l(self, numbers: Sequence[int]) -> torch.Tensor:
        """Angular momentum of every AO, LongTensor (nao,)."""
        ls = [s.l for z in np.asarray(numbers).reshape(-1) for s in self.shells(z) for _ in range(s.n_ao)]
        return torch.tensor(ls, dtype=torch.long)


def _shell_rotation(l: int, rotation_e3nn: torch.Tensor) -> torch.Tensor:
    """Real Wigner-D of angular momentum l in PySCF m order for a proper rotation (e3nn frame)."""
    from e3nn import o3

    d = o3.Irrep(l, 1).D_from_matrix(rotation_e3nn)
    if l == 1:
        inv = torch.tensor(_P1).argsort()
        d = d[inv][:, inv]
    return d


def ao_rotation(layout: BasisLayout, numbers: Sequence[int], rotation, inversion: bool = False) -> torch.Tensor:
    """Representation D of a rotation (and optionally inversion) on a molecule's whole AO space.

    For the transformation of positions ``r -> s * R r`` (``s = -1`` with ``inversion``, else 1), every
    one-electron matrix in PySCF AO order transforms as ``M(s R r) = D M(r) D^T``. Returns a float64
    tensor (nao, nao), block-diagonal over shells. ``rotation`` is a proper 3x3 rotation matrix (array or
    tensor); an improper matrix is rejected (pass ``inversion=True`` with ``-R`` instead).
    """
    with float64_default():
        rot = torch.as_tensor(np.asarray(rotation, dtype=np.float64))
        if rot.shape != (3, 3):
            raise ValueError(f"rotation must be 3x3, got {tuple(rot.shape)}")
        if not torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-10):
            raise ValueError("rotation matrix is not orthogonal")
        if torch.det(rot) < 0:
            raise ValueError("rotation matrix is improper (det = -1): pass -R with inversion=True")
        p = torch.eye(3, dtype=torch.float64)[list(_P1)]
        rot_e3nn = p @ rot @ p.T
        cache = {}
        blocks = []
        for z in np.asarray(numbers).reshape(-1):
            for s in layout.shells(int(z)):
                if s.l not in cache:
                    d = _shell_rotation(s.l, rot_e3nn)
                    if inversion and s.l % 2 == 1:
                        d = -d
                    cache[s.l] = d
                blocks.append(cache[s.l])
        return torch.block_diag(*blocks)
