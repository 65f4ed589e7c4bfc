"""Observables of a closed-shell Hamiltonian: pure torch functions, float64, atomic units.

All matrices are in PySCF's spherical AO order. Functions accept optional leading batch dimensions
(``...``) unless stated otherwise. Closed shell only: every occupied orbital holds two electrons.

| function | returns | shape | unit |
|---|---|---|---|
| solve_fock(fock, overlap) | mo_energy (ascending), mo_coeff with C^T S C = 1 | (..., nao), (..., nao, nao) | Ha, - |
| closed_shell_density(fock, overlap, n_occ) | P = 2 C_occ C_occ^T (robust backward) | (..., nao, nao) | - |
| occupations(n_mo, n_occ) | mo_occ (2 for occupied, 0 otherwise) | (n_mo,) | electrons |
| density_matrix(mo_coeff, mo_occ) | P = C n C^T | (..., nao, nao) | - |
| energy_weighted_density(mo_energy, mo_coeff, mo_occ) | W = C n eps C^T (PySCF make_rdm1e) | (..., nao, nao) | Ha |
| band_energy(mo_energy, mo_occ) | sum_i n_i eps_i | (...) | Ha |
| homo_lumo(mo_energy, n_occ) | (eps_HOMO, eps_LUMO) | (...), (...) | Ha |
| mulliken_charges(dm, overlap, ao_atom, atom_charges) | Z_A - sum_{mu in A} (P S)_{mu mu} | (..., natm) | e |
| dipole_moment(dm, ao_dip, atom_charges, positions_bohr) | nuclear - electronic dipole, origin 0 | (..., 3) | e*Bohr |
| density_on_points(mol, dm, points_bohr) | rho(r) | (npts,) | e/Bohr^3 |
| density_on_grid(mol, dm, nx, ny, nz, margin) | rho on a box, its origin and axes | (nx, ny, nz) | e/Bohr^3 |
| write_cube(path, mol, dm, ...) | Gaussian cube file of rho (via pyscf.tools.cubegen) | - | e/Bohr^3 |

Derivative of the density (``closed_shell_density``)
-----------------------------------------------------
With F C = S C eps, C^T S C = 1 and B = C^T dS C, the first-order change of P = 2 C_o C_o^T is

    dP = 2 C_v X C_o^T + 2 C_o X^T C_v^T - 2 C_o B_oo C_o^T,
    X_ai = (c_a^T dF c_i - eps_i B_ai) / (eps_i - eps_a)      (a virtual, i occupied).

Only occupied-virtual energy differences appear, so the gradient is finite when occupied (or virtual)
levels are degenerate, as long as the HOMO-LUMO gap is open. A closed gap raises ``ClosedGapError``.
The backward pass is itself differentiable (``create_graph=True``): it then recomputes the orbitals
with ``torch.linalg.eigh`` under autograd, whose derivative needs non-degenerate levels.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "ClosedGapError", "solve_fock", "closed_shell_density", "ClosedShellDensity", "occupations",
    "density_matrix", "energy_weighted_density", "band_energy", "homo_lumo", "mulliken_charges",
    "dipole_moment", "density_on_points", "density_on_grid", "write_cube",
]


class ClosedGapError(ValueError):
    """The HOMO-LUMO gap is (numerically) closed: the closed-shell density is not defined."""


def _t(x):
    return x.transpose(-1, -2)


def _sym(x):
    return 0.5 * (x + _t(x))


def solve_fock(fock: torch.Tensor, overlap: torch.Tensor):
    """Solve F C = S C eps for symmetric F and positive definite S (Cholesky + ``eigh``).

    Returns ``mo_energy`` (..., nao) in ascending order and ``mo_coeff`` (..., nao, nao) with orbitals
    as columns and C^T S C = 1. Differentiable through ``torch.linalg.eigh`` (non-degenerate levels);
    use :func:`closed_shell_density` for a density whose gradient survives degeneracies.
    """
    if fock.shape != overlap.shape or fock.shape[-1] != fock.shape[-2]:
        raise ValueError(f"fock {tuple(fock.shape)} and overlap {tuple(overlap.shape)} must be equal "
                         "square matrices")
    chol, info = torch.linalg.cholesky_ex(overlap)
    if bool((info != 0).any()):
        raise ValueError("the overlap matrix is not positive definite (linearly dependent basis "
                         "functions or atoms on top of each other)")
    # F' = L^-1 F L^-T ; eps, U = eigh(F') ; C = L^-T U
    tmp = torch.linalg.solve_triangular(chol, fock, upper=False)
    fock_orth = _t(torch.linalg.solve_triangular(chol, _t(tmp), upper=False))
    mo_energy, u = torch.linalg.eigh(_sym(fock_orth))
    mo_coeff = torch.linalg.solve_triangular(_t(chol), u, upper=True)
    return mo_energy, mo_coeff


def _check_n_occ(n_occ, nao):
    if isinstance(n_occ, torch.Tensor):
        n_occ = int(n_occ)
    if int(n_occ) != n_occ or not 0 <= n_occ <= nao:
        raise ValueError(f"n_occ must be an integer between 0 and nao={nao}, got {n_occ}")
    return int(n_occ)


def _check_gap(mo_energy, n_occ, gap_tol):
    nao = mo_energy.shape[-1]
    if 0 < n_occ < nao:
        gap = mo_energy[..., n_occ] - mo_energy[..., n_occ - 1]
        if bool((gap < gap_tol).any()):
            raise ClosedGapError(
                f"HOMO-LUMO gap {float(gap.min()):.3e} Ha is below {gap_tol:.1e} Ha: the closed-shell "
                "density is not defined (degenerate HOMO and LUMO). ase-wavecalc supports closed-shell "
                "molecules with an open gap only")


def _density_backward(grad, mo_energy, mo_coeff, n_occ):
    """dL/dF and dL/dS for P = 2 C_o C_o^T (torch ops; differentiable if eps, C carry a graph)."""
    c_o, c_v = mo_coeff[..., :n_occ], mo_coeff[..., n_occ:]
    e_o, e_v = mo_energy[..., :n_occ], mo_energy[..., n_occ:]
    g = _sym(grad)
    g_oo = _t(c_o) @ g @ c_o
    grad_s = -2.0 * c_o @ g_oo @ _t(c_o)
    grad_f = torch.zeros_like(grad_s)
    if c_v.shape[-1] > 0 and n_occ > 0:
        denom = e_o.unsqueeze(-2) - e_v.unsqueeze(-1)             # (..., nv, no): eps_i - eps_a
        z = 4.0 * (_t(c_v) @ g @ c_o) / denom
        grad_f = c_v @ z @ _t(c_o)
        grad_s = grad_s - c_v @ (z * e_o.unsqueeze(-2)) @ _t(c_o)
    return _sym(grad_f), _sym(grad_s)


class ClosedShellDensity(torch.autograd.Function):
    """``ClosedShellDensity.apply(fock, overlap, n_occ, gap_tol) -> P``; see :func:`closed_shell_density`."""

    @staticmethod
    def forward(ctx, fock, overlap, n_occ, gap_tol):
        with torch.no_grad():
            mo_energy, mo_coeff = solve_fock(fock, overlap)
        _check_gap(mo_energy, n_occ, gap_tol)
        c_o = mo_coeff[..., :n_occ]
        ctx.n_occ = n_occ
        ctx.save_for_backward(fock, overlap, mo_energy, mo_coeff)
        return 2.0 * c_o @ _t(c_o)

    @staticmethod
    def backward(ctx, grad):
        fock, overlap, mo_energy, mo_coeff = ctx.saved_tensors
        if torch.is_grad_enabled() and (fock.requires_grad or overlap.requires_grad):
            # create_graph=True: rebuild the orbitals under autograd so that the gradient is itself
            # differentiable with respect to F and S (through eigh: non-degenerate levels only)
            mo_energy, mo_coeff = solve_fock(fock, overlap)
        grad_f, grad_s = _density_backward(grad, mo_energy, mo_coeff, ctx.n_occ)
        return (grad_f if ctx.needs_input_grad[0] else None,
                grad_s if ctx.needs_input_grad[1] else None, None, None)


def closed_shell_density(fock: torch.Tensor, overlap: torch.Tensor, n_occ: int,
                         gap_tol: float = 1e-6) -> torch.Tensor:
    """Closed-shell density matrix P = 2 C_occ C_occ^T of F C = S C eps, (..., nao, nao).

    ``n_occ`` is the number of doubly occupied orbitals (electrons / 2). The backward pass uses only
    occupied-virtual couplings, so it is finite for degenerate occupied or virtual levels; gradients
    with respect to F and S are returned symmetrized (F and S are symmetric matrices). Raises
    :class:`ClosedGapError` when the HOMO-LUMO gap is below ``gap_tol`` Hartree.
    """
    n_occ = _check_n_occ(n_occ, fock.shape[-1])
    return ClosedShellDensity.apply(fock, overlap, n_occ, float(gap_tol))


def occupations(n_mo: int, n_occ: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Closed-shell occupation numbers (n_mo,): 2 for the n_occ lowest orbitals, 0 otherwise."""
    n_occ = _check_n_occ(n_occ, n_mo)
    occ = torch.zeros(n_mo, dtype=dtype, device=device)
    occ[:n_occ] = 2.0
    return occ


def density_matrix(mo_coeff: torch.Tensor, mo_occ: torch.Tensor) -> torch.Tensor:
    """P = C diag(n) C^T (PySCF make_rdm1), (..., nao, nao)."""
    return (mo_coeff * mo_occ.unsqueeze(-2)) @ _t(mo_coeff)


def energy_weighted_density(mo_energy: torch.Tensor, mo_coeff: torch.Tensor,
                            mo_occ: torch.Tensor) -> torch.Tensor:
    """W = C diag(n eps) C^T (PySCF make_rdm1e), (..., nao, nao) Hartree. dE_band/dS = -W."""
    return (mo_coeff * (mo_occ * mo_energy).unsqueeze(-2)) @ _t(mo_coeff)


def band_energy(mo_energy: torch.Tensor, mo_occ: torch.Tensor) -> torch.Tensor:
    """sum_i n_i eps_i, (...) Hartree. Equals Tr[P F]."""
    return (mo_occ * mo_energy).sum(-1)


def homo_lumo(mo_energy: torch.Tensor, n_occ: int):
    """(eps_HOMO, eps_LUMO) in Hartree; NaN where there is no occupied / no virtual orbital."""
    n_occ = _check_n_occ(n_occ, mo_energy.shape[-1])
    nan = torch.full_like(mo_energy[..., 0], float("nan"))
    homo = mo_energy[..., n_occ - 1] if n_occ > 0 else nan
    lumo = mo_energy[..., n_occ] if n_occ < mo_energy.shape[-1] else nan
    return homo, lumo


def _as_tensor(x, like: torch.Tensor, dtype=None):
    if torch.is_tensor(x):
        return x.to(device=like.device, dtype=dtype or x.dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype or like.dtype, device=like.device)


def mulliken_charges(dm: torch.Tensor, overlap: torch.Tensor, ao_atom, atom_charges) -> torch.Tensor:
    """Mulliken charges q_A = Z_A - sum_{mu in A} (P S)_{mu mu}, (..., natm) in e.

    ``ao_atom`` (nao,) is the atom index of every AO (``integrals.ao_atom_index(mol)``);
    ``atom_charges`` (natm,) the nuclear charges (``mol.atom_charges()``, effective with ECPs).
    Agrees with PySCF's ``mulliken_pop``.
    """
    z = _as_tensor(atom_charges, dm, dm.dtype)
    idx = _as_tensor(ao_atom, dm, torch.long)
    pop = (dm * _t(overlap)).sum(-1)                   # (P S)_{mu mu}
    onehot = torch.nn.functional.one_hot(idx, z.shape[-1]).to(dm.dtype)
    return z - pop @ onehot


def dipole_moment(dm: torch.Tensor, ao_dip, atom_charges, positions_bohr) -> torch.Tensor:
    """Total dipole moment sum_A Z_A R_A - Tr[P r], origin (0, 0, 0), (..., 3) e*Bohr.

    ``ao_dip`` (3, nao, nao) from ``integrals.ao_dipole(mol)``; agrees with PySCF's
    ``dip_moment(unit='au')``. For charged molecules the value depends on the origin.
    """
    ao_dip = _as_tensor(ao_dip, dm, dm.dtype)
    z = _as_tensor(atom_charges, dm, dm.dtype)
    r = _as_tensor(positions_bohr, dm, dm.dtype)
    electronic = torch.einsum("xij,...ji->...x", ao_dip, dm)
    nuclear = torch.einsum("a,...ax->...x", z, r)
    return nuclear - electronic


def density_on_points(mol, dm, points_bohr, chunk: int = 20000) -> torch.Tensor:
    """Electron density rho(r) = sum_{mu nu} P_{mu nu} phi_mu(r) phi_nu(r) at points (npts, 3) Bohr.

    Returns (npts,) e/Bohr^3 as a torch tensor, differentiable with respect to ``dm`` (AO values from
    PySCF's ``numint.eval_ao`` are constants). ``dm`` may be a numpy array or a tensor (nao, nao).
    """
    from pyscf.dft import numint

    dm_t = dm if torch.is_tensor(dm) else torch.as_tensor(np.asarray(dm), dtype=torch.float64)
    points = np.asarray(points_bohr.detach().cpu() if torch.is_tensor(points_bohr) else points_bohr,
                        dtype=np.float64).reshape(-1, 3)
    out = []
    for start in range(0, len(points), chunk):
        ao = torch.as_tensor(numint.eval_ao(mol, points[start:start + chunk], deriv=0),
                             dtype=dm_t.dtype, device=dm_t.device)
        out.append(torch.einsum("pi,ij,pj->p", ao, dm_t, ao))
    if not out:
        return dm_t.new_zeros(0)
    return torch.cat(out)


def density_on_grid(mol, dm, nx: int = 80, ny: int = 80, nz: int = 80, margin: float = 3.0,
                    resolution: float | None = None):
    """Density on the box pyscf.tools.cubegen would write (atoms + ``margin`` Bohr on each side).

    Returns ``(rho (nx, ny, nz) numpy e/Bohr^3, origin (3,) Bohr, axes (3, 3) Bohr)`` where point
    (i, j, k) sits at ``origin + i*axes[0] + j*axes[1] + k*axes[2]``. ``resolution`` (Bohr), if given,
    overrides nx, ny, nz as in cubegen.
    """
    from pyscf.tools import cubegen

    cube = cubegen.Cube(mol, nx, ny, nz, resolution, margin)
    rho = density_on_points(mol, _numpy(dm), cube.get_coords()).numpy()
    axes = cube.box / (np.array([cube.nx, cube.ny, cube.nz]) - 1)[:, None]
    return rho.reshape(cube.nx, cube.ny, cube.nz), np.array(cube.boxorig), axes


def _numpy(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def write_cube(path, mol, dm, nx: int = 80, ny: int = 80, nz: int = 80, margin: float = 3.0,
               resolution: float | None = None):
    """Write the electron density of ``dm`` (nao, nao) as a Gaussian cube file (Bohr, e/Bohr^3).

    Uses ``pyscf.tools.cubegen.density``; returns the density array (nx, ny, nz).
    """
    from pyscf.tools import cubegen

    return cubegen.density(mol, str(path), _numpy(dm), nx=nx, ny=ny, nz=nz, resolution=resolution,
                           margin=margin)
