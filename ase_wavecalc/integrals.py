"""PySCF molecules and one-electron integrals (atomic units, PySCF spherical AO order).

| function | returns | shape | unit |
|---|---|---|---|
| make_mol | pyscf.gto.Mole built in Bohr, symmetry off, spherical AOs | - | - |
| overlap(mol) | S | (nao, nao) | - |
| core_hamiltonian(mol) | h = T + V_nuc (+ ECP) | (nao, nao) | Hartree |
| ao_dipole(mol) | <mu| r |nu>, origin (0, 0, 0) | (3, nao, nao) | Bohr |
| ao_atom_index(mol) | atom index of every AO | (nao,) | - |
| overlap_derivative(mol) | dS/dR_A | (natm, 3, nao, nao) | 1/Bohr |
| core_hamiltonian_derivative(mol) | dh/dR_A | (natm, 3, nao, nao) | Hartree/Bohr |
| OverlapFunction / overlap_torch | S(R) as a differentiable torch op | (nao, nao) | - |
| CoreHamiltonianFunction / core_hamiltonian_torch | h(R) as a differentiable torch op | (nao, nao) | Hartree |
| nuclear_repulsion | E_nn(R), torch | () | Hartree |

Derivatives of the torch ops
----------------------------
``OverlapFunction`` and ``CoreHamiltonianFunction`` map positions (n, 3) Bohr, float64, to an (nao, nao)
matrix; the forward pass calls PySCF. The backward pass is written in torch ops on ``grad_output``:

    dL/dR[A, x] = sum_ij grad_output[i, j] * D[A, x, i, j],    D = dM/dR (PySCF analytic integrals)

where ``D`` is itself the output of a second autograd function of the positions whose backward uses
PySCF's analytic *second* derivative integrals (overlap: int1e_ipipovlp, int1e_ipovlpip; core
Hamiltonian: ``pyscf.hessian.rhf.Hessian.hcore_generator``). Hence with ``create_graph=True``:

* the double backward is exact with respect to ``grad_output`` (force training: the force depends on
  network parameters through ``grad_output``), and
* it is exact with respect to the positions too (autograd Hessians of energies built on S and h).

Third derivatives of the integrals are not provided (the second-derivative tensors are constants).
ECP basis sets are supported (PySCF's generators include ECP terms); X2C and PBC are not.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "make_mol", "overlap", "core_hamiltonian", "ao_dipole", "ao_atom_index",
    "overlap_derivative", "core_hamiltonian_derivative",
    "OverlapFunction", "CoreHamiltonianFunction", "overlap_torch", "core_hamiltonian_torch",
    "nuclear_repulsion",
]


def make_mol(numbers, positions_bohr, basis: str, charge: int = 0, spin: int = 0, verbose: int = 0):
    """Build a PySCF ``Mole`` from atomic numbers (n,) and positions (n, 3) in Bohr.

    ``symmetry=False`` and ``cart=False`` always: the molecule is never reoriented, so the AO matrices
    refer to exactly the given frame. ``spin`` is 2S (number of unpaired electrons), as in PySCF. def2
    basis sets come with their ECPs for Z > 36 (``mol.nelectron`` then counts valence electrons only).
    Parsing the basis set is most of the cost of ``Mole.build`` (~9 ms for ethanol/def2-SVP), so one
    built template per (elements, basis, charge, spin) is kept and each call returns a copy of it
    moved to the new positions (``Mole.set_geom_``, ~0.03 ms); callers may modify what they get.
    """
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    positions_bohr = np.asarray(positions_bohr, dtype=float).reshape(-1, 3)
    if len(numbers) != len(positions_bohr):
        raise ValueError(f"{len(numbers)} atomic numbers but {len(positions_bohr)} positions")
    key = (tuple(int(z) for z in numbers), str(basis), int(charge), int(spin), int(verbose))
    template = _MOL_TEMPLATES.get(key)
    if template is None:
        template = _build_mol(numbers, positions_bohr, basis, charge, spin, verbose)
        if len(_MOL_TEMPLATES) >= _MAX_TEMPLATES:
            _MOL_TEMPLATES.pop(next(iter(_MOL_TEMPLATES)))
        _MOL_TEMPLATES[key] = template
    return template.set_geom_(positions_bohr, unit="Bohr", inplace=False)


_MOL_TEMPLATES: dict = {}
_MAX_TEMPLATES = 32


def _default_ecp(numbers, basis) -> dict:
    """The effective core potentials a basis is defined with: the def2 family uses the Stuttgart-Cologne
    ECPs for Rb-Rn (Z > 36). PySCF loads them only when asked (``mol.ecp``), and without them a def2
    calculation on, e.g., iodine would silently be all-electron in a basis made for a pseudopotential.
    """
    from pyscf.data.elements import ELEMENTS

    if not isinstance(basis, str) or not basis.lower().replace("-", "").startswith("def2"):
        return {}
    return {ELEMENTS[int(z)]: basis for z in sorted(set(int(z) for z in numbers)) if int(z) > 36}


def _build_mol(numbers, positions_bohr, basis, charge, spin, verbose):
    from pyscf import gto

    mol = gto.Mole()
    mol.atom = [(int(z), tuple(map(float, r))) for z, r in zip(numbers, positions_bohr)]
    mol.unit = "Bohr"
    mol.basis = basis
    mol.ecp = _default_ecp(numbers, basis)
    mol.charge = int(charge)
    mol.spin = int(spin)
    mol.symmetry = False
    mol.cart = False
    mol.verbose = verbose
    mol.build(parse_arg=False, dump_input=False)
    return mol


# ---------------------------------------------------------------------------------------------------
# plain numpy integrals
# ---------------------------------------------------------------------------------------------------
def overlap(mol) -> np.ndarray:
    """AO overlap matrix S (nao, nao)."""
    return mol.intor_symmetric("int1e_ovlp")


def core_hamiltonian(mol) -> np.ndarray:
    """Core Hamiltonian h = T + V_nuc (+ ECP when the basis has one), (nao, nao) Hartree."""
    from pyscf.scf import hf

    return hf.get_hcore(mol)


def ao_dipole(mol) -> np.ndarray:
    """Position integrals <mu| r |nu> with the origin at (0, 0, 0), (3, nao, nao) Bohr.

    The electronic dipole of a density matrix P is ``-einsum('xij,ji->x', ao_dipole, P)``.
    """
    with mol.with_common_orig((0.0, 0.0, 0.0)):
        return mol.intor_symmetric("int1e_r", comp=3)


def ao_atom_index(mol) -> np.ndarray:
    """Index of the atom owning each AO, (nao,) int64, PySCF AO order."""
    out = np.empty(mol.nao_nr(), dtype=np.int64)
    for atom, (_, _, a0, a1) in enumerate(mol.aoslice_by_atom()):
        out[a0:a1] = atom
    return out


def overlap_derivative(mol) -> np.ndarray:
    """dS/dR_A[x] for every atom A, (natm, 3, nao, nao) per Bohr (from int1e_ipovlp)."""
    ip = mol.intor("int1e_ipovlp", comp=3)  # <d/dr mu | nu>
    nao = ip.shape[-1]
    out = np.zeros((mol.natm, 3, nao, nao))
    for atom, (_, _, a0, a1) in enumerate(mol.aoslice_by_atom()):
        out[atom, :, a0:a1, :] -= ip[:, a0:a1, :]
        out[atom, :, :, a0:a1] -= ip[:, a0:a1, :].transpose(0, 2, 1)
    return out


def _rhf(mol):
    from pyscf import scf

    return scf.RHF(mol)


def core_hamiltonian_derivative(mol) -> np.ndarray:
    """dh/dR_A[x] for every atom A, (natm, 3, nao, nao) Hartree/Bohr.

    h = T + sum_C V_C. Moving atom A moves its basis functions (bra/ket derivatives of T and of all
    V_C) and its own nucleus (the operator derivative of V_A). Both come from one PySCF call,
    ``int1e_grids_ip`` at the nuclei: <d/dr mu| 1/|r - R_C| |nu> for every C, which is what
    ``pyscf.grad.rhf``'s ``hcore_generator`` evaluates nucleus by nucleus (``int1e_iprinv``) plus the
    sum over C (``int1e_ipnuc``); the single call is ~3x faster. Basis sets with ECPs and finite-size
    nuclear models use PySCF's generator.
    """
    if mol.has_ecp() or getattr(mol, "nucmod", None):
        deriv = _rhf(mol).nuc_grad_method().hcore_generator(mol)
        return np.stack([deriv(atom) for atom in range(mol.natm)])
    charges = mol.atom_charges().astype(float)
    rinv = mol.intor("int1e_grids_ip", grids=mol.atom_coords())      # (3, natm, nao, nao)
    h1 = -(mol.intor("int1e_ipkin", comp=3) - np.einsum("c,xcij->xij", charges, rinv))  # -<d mu|h|nu>
    out = np.empty((mol.natm,) + h1.shape)
    for atom, (_, _, a0, a1) in enumerate(mol.aoslice_by_atom()):
        v = -charges[atom] * rinv[:, atom]                            # operator derivative, bra part
        v[:, a0:a1] += h1[:, a0:a1]
        out[atom] = v + v.transpose(0, 2, 1)
    return out


# ---------------------------------------------------------------------------------------------------
# torch ops
# ---------------------------------------------------------------------------------------------------
def _check_positions(positions_bohr: torch.Tensor, numbers) -> None:
    if not torch.is_tensor(positions_bohr):
        raise TypeError("positions_bohr must be a torch tensor")
    if positions_bohr.dtype != torch.float64:
        raise TypeError(f"positions_bohr must be float64, got {positions_bohr.dtype}")
    if positions_bohr.shape != (len(numbers), 3):
        raise ValueError(f"positions_bohr must have shape ({len(numbers)}, 3), got "
                         f"{tuple(positions_bohr.shape)}")


def _mol_from(positions_bohr: torch.Tensor, numbers, basis):
    return make_mol(numbers, positions_bohr.detach().cpu().numpy(), basis)


def _numbers_tuple(numbers):
    if torch.is_tensor(numbers):
        numbers = numbers.detach().cpu().numpy()
    return tuple(int(z) for z in np.asarray(numbers).reshape(-1))


class _DerivativeFunction(torch.autograd.Function):
    """positions (n, 3) -> dM/dR (n, 3, nao, nao) from PySCF (``_first``); subclasses give the backward."""

    _first = None  # mol -> np.ndarray (natm, 3, nao, nao)

    @classmethod
    def forward(cls, ctx, positions_bohr, numbers, basis):
        ctx.numbers, ctx.basis = numbers, basis
        ctx.save_for_backward(positions_bohr)
        mol = _mol_from(positions_bohr, numbers, basis)
        return torch.as_tensor(cls._first(mol), dtype=positions_bohr.dtype, device=positions_bohr.device)


class _OverlapDerivative(_DerivativeFunction):
    """positions (n, 3) -> dS/dR (n, 3, nao, nao); backward with analytic second derivatives."""

    _first = staticmethod(overlap_derivative)

    @staticmethod
    def backward(ctx, grad):
        (positions_bohr,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        mol = _mol_from(positions_bohr, ctx.numbers, ctx.basis)
        nao = mol.nao_nr()
        kw = dict(dtype=grad.dtype, device=grad.device)
        # ipip[x, y, mu, nu] = <d_x d_y mu | nu>;  ipip_r[x, y, mu, nu] = <d_x mu | d_y nu>
        ipip = torch.as_tensor(mol.intor("int1e_ipipovlp", comp=9), **kw).reshape(3, 3, nao, nao)
        ipvip = torch.as_tensor(mol.intor("int1e_ipovlpip", comp=9), **kw).reshape(3, 3, nao, nao)
        slices = [(a0, a1) for (_, _, a0, a1) in mol.aoslice_by_atom()]
        # d2 S_{mu nu} / dR_Ax dR_By =
        #   [mu in A][mu in B] <d_x d_y mu|nu> + [mu in A][nu in B] <d_x mu|d_y nu>
        # + [nu in A][mu in B] <d_y mu|d_x nu> + [nu in A][nu in B] <mu|d_x d_y nu>
        # result[B, y] = sum_{A x mu nu} grad[A, x, mu, nu] * d2S / dR_Ax dR_By
        g_rows = torch.cat([grad[a, :, a0:a1, :] for a, (a0, a1) in enumerate(slices)], dim=1)
        g_cols = torch.cat([grad[a, :, :, a0:a1] for a, (a0, a1) in enumerate(slices)], dim=2)
        out = []
        for b, (b0, b1) in enumerate(slices):
            res = torch.einsum("xmn,xymn->y", grad[b, :, b0:b1, :], ipip[:, :, b0:b1, :])
            res = res + torch.einsum("xmn,xynm->y", grad[b, :, :, b0:b1], ipip[:, :, b0:b1, :])
            res = res + torch.einsum("xmn,xymn->y", g_rows[:, :, b0:b1], ipvip[:, :, :, b0:b1])
            res = res + torch.einsum("xmn,yxmn->y", g_cols[:, b0:b1, :], ipvip[:, :, b0:b1, :])
            out.append(res)
        return torch.stack(out), None, None


class _CoreHamiltonianDerivative(_DerivativeFunction):
    """positions (n, 3) -> dh/dR (n, 3, nao, nao); backward with pyscf.hessian hcore_generator."""

    _first = staticmethod(core_hamiltonian_derivative)

    @staticmethod
    def backward(ctx, grad):
        (positions_bohr,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        from pyscf.hessian import rhf as rhf_hess

        mol = _mol_from(positions_bohr, ctx.numbers, ctx.basis)
        second = rhf_hess.Hessian(_rhf(mol)).hcore_generator(mol)  # (i, j) -> (3, 3, nao, nao)
        kw = dict(dtype=grad.dtype, device=grad.device)
        out = []
        for b in range(mol.natm):
            res = grad.new_zeros(3)
            for a in range(mol.natm):
                h2 = torch.as_tensor(second(a, b), **kw)  # d2h / dR_a,x dR_b,y
                res = res + torch.einsum("xmn,xymn->y", grad[a], h2)
            out.append(res)
        return torch.stack(out), None, None


class _OneElectronFunction(torch.autograd.Function):
    _matrix = None       # mol -> np.ndarray
    _derivative = None   # autograd Function: positions -> (n, 3, nao, nao)

    @classmethod
    def forward(cls, ctx, positions_bohr, numbers, basis):
        numbers = _numbers_tuple(numbers)
        _check_positions(positions_bohr, numbers)
        ctx.numbers, ctx.basis = numbers, basis
        ctx.save_for_backward(positions_bohr)
        mol = _mol_from(positions_bohr, numbers, basis)
        return torch.as_tensor(cls._matrix(mol), dtype=positions_bohr.dtype, device=positions_bohr.device)

    @classmethod
    def backward(cls, ctx, grad_output):
        (positions_bohr,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None
        deriv = cls._derivative.apply(positions_bohr, ctx.numbers, ctx.basis)
        return torch.einsum("ij,axij->ax", grad_output, deriv), None, None


class OverlapFunction(_OneElectronFunction):
    """``OverlapFunction.apply(positions_bohr (n, 3) float64, numbers, basis) -> S (nao, nao)``.

    Backward: PySCF's analytic dS/dR (int1e_ipovlp), twice differentiable (see module docstring).
    """

    _matrix = staticmethod(overlap)
    _derivative = _OverlapDerivative


class CoreHamiltonianFunction(_OneElectronFunction):
    """``CoreHamiltonianFunction.apply(positions_bohr (n, 3) float64, numbers, basis) -> h (nao, nao)``.

    Hartree. Backward: pyscf.grad.rhf hcore_generator, twice differentiable (see module docstring).
    """

    _matrix = staticmethod(core_hamiltonian)
    _derivative = _CoreHamiltonianDerivative


def overlap_torch(numbers, positions_bohr: torch.Tensor, basis) -> torch.Tensor:
    """Differentiable AO overlap S(R), (nao, nao); positions in Bohr, float64."""
    return OverlapFunction.apply(positions_bohr, _numbers_tuple(numbers), basis)


def core_hamiltonian_torch(numbers, positions_bohr: torch.Tensor, basis) -> torch.Tensor:
    """Differentiable core Hamiltonian h(R), (nao, nao) Hartree; positions in Bohr, float64."""
    return CoreHamiltonianFunction.apply(positions_bohr, _numbers_tuple(numbers), basis)


def nuclear_repulsion(numbers, positions_bohr: torch.Tensor) -> torch.Tensor:
    """E_nn = sum_{A<B} Z_A Z_B / |R_A - R_B| in Hartree, differentiable to any order.

    ``numbers`` are the nuclear charges: atomic numbers, or ``mol.atom_charges()`` (effective core
    charges) for basis sets with ECPs. Positions (n, 3) Bohr; returns a 0-d tensor of their dtype.
    """
    z = torch.as_tensor(np.asarray(numbers.detach().cpu() if torch.is_tensor(numbers) else numbers,
                                   dtype=np.float64), dtype=positions_bohr.dtype,
                        device=positions_bohr.device).reshape(-1)
    n = z.shape[0]
    if n < 2:
        return positions_bohr.sum() * 0.0
    i, j = torch.triu_indices(n, n, offset=1, device=positions_bohr.device)
    dist = torch.linalg.norm(positions_bohr[i] - positions_bohr[j], dim=-1)
    return (z[i] * z[j] / dist).sum()
