"""Design 2 of the energy paths: a learned functional of the predicted density matrix, plus E_nn.

    E = E_nn(R) + sum_A [e0(Z_A) + MLP(d_A[P])],   P = P(F_model(R), S(R))

(``benchmarks/_density_functional.py``). The Fock network is the shipped model's, frozen, so P is the one
the calculator already predicts; only the functional is trained, on the same training frames (card split)
and with the same energy + force loss as the shipped readout model.

Training needs dP/dR for every training frame: the force of the functional is
-dE_nn/dR - sum_(mu nu) dE/dP_(mu nu) dP_(mu nu)/dR. With F frozen, dP/dR (3n, nao, nao) is computed
once per frame by central differences (h = 1e-4 Bohr; the network's F and PySCF's S at the 6n displaced
geometries, as one network batch), so an epoch costs only the MLP. Test errors use the exact autograd
gradient through the network, the density's response and S (no differences), on the card's test frames.

    python benchmarks/density_functional.py --model ethanol-pbe-def2svp --dataset data/ethanol_pbe_def2svp.db

Prints a table (energy and force MAE, ms per energy+forces call, optional Langevin stability) and writes
benchmarks/results/density_functional_<dataset stem>.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase_wavecalc.electronic import closed_shell_density
from _common import finish_machine_info, machine_info, machine_line, table, write_result


def load_frames(dataset: Path, card: dict):
    from ase_wavecalc.dataset import read_dataset
    from ase_wavecalc.train.data import split_frames

    data = read_dataset(dataset, keys=["e_tot", "gradient", "overlap"])
    entry = next(e for e in card["split"]["datasets"] if e["name"] == dataset.name)
    split = split_frames(data["frame"], entry["train"], entry["val"], entry["test"], card["split"]["seed"])
    if sorted(split["test"]) != sorted(entry["test_frames"]):
        raise SystemExit("the recomputed split does not reproduce the card's test frames")
    index = {int(f): i for i, f in enumerate(data["frame"])}
    return data, {k: [index[f] for f in v] for k, v in split.items()}


def fock_of(model, numbers, positions_bohr: torch.Tensor) -> torch.Tensor:
    """Network F for (B, n, 3) positions: (B, nao, nao) float64."""
    B, n = positions_bohr.shape[:2]
    z = torch.as_tensor(numbers, dtype=torch.long).repeat(B)
    batch = torch.arange(B).repeat_interleave(n)
    return model(z, positions_bohr.reshape(-1, 3), batch)["fock"].double()


def density_and_jacobian(model, numbers, pos, basis, n_occ, h=1e-4):
    """P (nao, nao) at pos (n, 3) Bohr and dP/dR (3n, nao, nao) by central differences."""
    from ase_wavecalc import integrals

    n = len(numbers)
    disp = pos[None].repeat(6 * n + 1, 1, 1)
    for k in range(3 * n):
        disp[2 * k, k // 3, k % 3] += h
        disp[2 * k + 1, k // 3, k % 3] -= h
    with torch.no_grad():
        fock = fock_of(model, numbers, disp)
    overlap = torch.stack([torch.as_tensor(integrals.overlap(integrals.make_mol(numbers, p.numpy(), basis)))
                           for p in disp])
    dm = closed_shell_density(fock, overlap, n_occ)
    return dm[-1], (dm[0:-1:2] - dm[1:-1:2]) / (2 * h)


def base_energy(model, numbers, pos: torch.Tensor, basis: str, base: str):
    """The physical part of the energy at positions (n, 3) Bohr (requires_grad for a gradient): "nuclear":
    E_nn; "electronic": E_nn + 1/2 Tr[P (F + h_core)] with the network's F (the Hamiltonian path without
    its learned parts). Returns (energy, P or None)."""
    from ase_wavecalc.energy import total_energy
    from ase_wavecalc.integrals import nuclear_repulsion

    if base == "nuclear":
        return nuclear_repulsion(numbers, pos), None
    fock = fock_of(model, numbers, pos[None])[0]
    e, parts = total_energy(numbers, pos, fock, basis)
    return e, parts["dm"]


def base_terms(model, numbers, positions_bohr, basis, base):
    """Base energies (F,) Hartree and their gradients (F, n, 3) Hartree/Bohr (exact autograd)."""
    es, gs = [], []
    for pos in positions_bohr:
        p = torch.tensor(pos, requires_grad=True)
        e, _ = base_energy(model, numbers, p, basis, base)
        (g,) = torch.autograd.grad(e, p)
        es.append(float(e.detach()))
        gs.append(g)
    return torch.tensor(es), torch.stack(gs)


def precompute(model, data, rows, basis, n_occ, label, jacobian: bool, base: str, chunk: int = 16):
    """Stored inputs of the functional for ``rows``: P (and dP/dR with ``jacobian``), E_nn, references."""
    numbers = data["numbers"]
    t0 = time.perf_counter()
    block = {"e_tot": torch.tensor(data["e_tot"][rows]), "gradient": torch.tensor(data["gradient"][rows])}
    block["e_base"], block["g_base"] = base_terms(model, numbers, data["positions_bohr"][rows], basis, base)
    if not jacobian:
        dms = []
        for s in range(0, len(rows), chunk):
            r = rows[s:s + chunk]
            with torch.no_grad():
                fock = fock_of(model, numbers, torch.tensor(data["positions_bohr"][r]))
            dms.append(closed_shell_density(fock, torch.tensor(data["overlap"][r]), n_occ))
        block["dm"] = torch.cat(dms)
    else:
        dms, jacs = [], []
        for k, i in enumerate(rows):
            dm, jac = density_and_jacobian(model, numbers, torch.tensor(data["positions_bohr"][i]), basis, n_occ)
            dms.append(dm)
            jacs.append(jac)
            if (k + 1) % 100 == 0:
                print(f"  {label}: {k + 1}/{len(rows)} frames with dP/dR, {time.perf_counter() - t0:.0f} s",
                      flush=True)
        block["dm"], block["jac"] = torch.stack(dms), torch.stack(jacs)
    print(f"  {label}: {len(rows)} frames in {time.perf_counter() - t0:.0f} s", flush=True)
    return block


def predict(functional, numbers, block, create_graph):
    """Energies (B,) and, where the block has dP/dR, gradients (B, n, 3) of the functional."""
    if "jac" not in block:
        return functional(numbers, block["dm"]) + block["e_base"], None
    dm = block["dm"].clone().requires_grad_(True)
    e = functional(numbers, dm)
    (g_dm,) = torch.autograd.grad(e.sum(), dm, create_graph=create_graph)
    grad = torch.einsum("bmn,bkmn->bk", g_dm, block["jac"]).view(block["g_base"].shape) + block["g_base"]
    return e + block["e_base"], grad


def _take(block, idx):
    return {k: v[idx] for k, v in block.items()}


def _validation_mae(functional, numbers, va):
    """(energy MAE meV, force MAE meV/A) on the validation block."""
    e, g = predict(functional, numbers, va, create_graph=False)
    return (float((e - va["e_tot"]).detach().abs().mean()) * 27211.386,
            float((g - va["gradient"]).detach().abs().mean()) * 51422.067)


def train(functional, numbers, tr_e, tr_f, va, minutes, epochs, batch_size, w_energy, w_forces, lr, seed):
    """Adam + cosine decay; each step one energy batch (all training frames) and one force batch (the frames
    with dP/dR); the best validation state (energy + force MAE), the starting one (the linear fit) included,
    is kept. The cosine runs over the epochs or the time budget, whichever ends first, so a run stopped by
    ``minutes`` still ends at a small learning rate."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(functional.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n_e, n_f = len(tr_e["e_tot"]), len(tr_f["e_tot"])
    steps = max(1, n_e // batch_size)
    e_mae, f_mae = _validation_mae(functional, numbers, va)
    curve, best = [], e_mae + f_mae
    best_state = {k: v.clone() for k, v in functional.state_dict().items()}
    t0 = time.perf_counter()
    for epoch in range(epochs):
        progress = min(1.0, max(epoch / epochs, (time.perf_counter() - t0) / (60 * minutes)))
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        perm_e = torch.randperm(n_e, generator=gen)
        perm_f = torch.randperm(n_f, generator=gen)
        for s in range(steps):
            be = _take(tr_e, perm_e[s * batch_size:(s + 1) * batch_size])
            fi = perm_f[torch.arange(s * batch_size, (s + 1) * batch_size) % n_f]
            bf = _take(tr_f, fi)
            e, _ = predict(functional, numbers, be, create_graph=True)
            _, g = predict(functional, numbers, bf, create_graph=True)
            loss = (w_energy * (e - be["e_tot"]).square().mean() / len(numbers)
                    + w_forces * (g - bf["gradient"]).square().mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
        e_mae, f_mae = _validation_mae(functional, numbers, va)
        curve.append({"epoch": epoch + 1, "val_energy_mae_mev": e_mae, "val_force_mae_mev_a": f_mae,
                      "seconds": time.perf_counter() - t0})
        print(f"  epoch {epoch + 1}: val E {e_mae:.2f} meV, F {f_mae:.1f} meV/A", flush=True)
        if f_mae + e_mae < best:
            best, best_state = f_mae + e_mae, {k: v.clone() for k, v in functional.state_dict().items()}
        if time.perf_counter() - t0 > 60 * minutes:
            break
    functional.load_state_dict(best_state)
    return curve


def refit_offsets(functional, numbers, tr):
    """Least-squares shift of e0 per element on the training frames (the exported models do the same)."""
    with torch.no_grad():
        e, _ = predict(functional, numbers, {k: v for k, v in tr.items() if k != "jac"}, create_graph=False)
        shift = float((tr["e_tot"] - e).mean())
        counts = torch.bincount(functional.element_index(numbers), minlength=len(functional.e0)).double()
        functional.e0 += shift * counts / counts.square().sum()


def _design(functional, numbers, block):
    """Rows of the linear model for a block: energy rows (B, n_par) and, with dP/dR, gradient rows
    (B * 3n, n_par); parameters [w (n_el * n_f), e0 (n_el)]."""
    from torch.func import jvp, vmap

    n_el = len(functional.e0)
    counts = torch.bincount(functional.element_index(numbers), minlength=n_el).double()
    with torch.no_grad():
        X = functional.element_sums(numbers, block["dm"]).flatten(1)
    A_e = torch.cat([X, counts.expand(len(X), n_el)], 1)
    if "jac" not in block:
        return A_e, None
    f = lambda dm: functional.element_sums(numbers, dm).flatten()   # noqa: E731
    rows = []
    for dm, jac in zip(block["dm"], block["jac"]):
        d = vmap(lambda t: jvp(f, (dm,), (t,))[1])(jac)              # (3n, n_el * n_f)
        rows.append(torch.cat([d, d.new_zeros(len(d), n_el)], 1))
    return A_e, torch.cat(rows)


def fit_linear(functional, numbers, tr_e, tr_f, va, w_energy, w_forces, alphas=(1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)):
    """Closed-form weighted ridge fit of the linear term and e0 to E - E_nn and the gradient minus E_nn's,
    with the weights of the training loss; the ridge strength is chosen on validation frames (force + energy
    MAE). Returns {alpha: validation errors}."""
    n = len(numbers)
    A_e, _ = _design(functional, numbers, tr_e)
    _, A_f = _design(functional, numbers, tr_f)
    y_e = tr_e["e_tot"] - tr_e["e_base"]
    y_f = (tr_f["gradient"] - tr_f["g_base"]).reshape(-1)
    s_e = (w_energy / (n * len(y_e))) ** 0.5
    s_f = (w_forces / len(y_f)) ** 0.5
    A = torch.cat([s_e * A_e, s_f * A_f])
    y = torch.cat([s_e * y_e, s_f * y_f])
    n_el = len(functional.e0)
    n_w = A.shape[1] - n_el
    AtA, Aty = A.T @ A, A.T @ y
    scale = float(AtA.diagonal()[:n_w].mean())
    V_e, V_f = _design(functional, numbers, va)
    results, best = {}, None
    for alpha in alphas:
        reg = torch.zeros(A.shape[1], dtype=A.dtype)
        reg[:n_w] = alpha * scale
        theta = torch.linalg.solve(AtA + torch.diag(reg), Aty)
        e_mae = float((V_e @ theta + va["e_base"] - va["e_tot"]).abs().mean()) * 27211.386
        f_mae = float((V_f @ theta - (va["gradient"] - va["g_base"]).reshape(-1)).abs().mean()) * 51422.067
        results[alpha] = {"val_energy_mae_mev": e_mae, "val_force_mae_mev_a": f_mae}
        print(f"  linear fit, ridge {alpha:g}: val E {e_mae:.2f} meV, F {f_mae:.1f} meV/A", flush=True)
        if best is None or e_mae + f_mae < best[0]:
            best = (e_mae + f_mae, theta)
    theta = best[1]
    with torch.no_grad():
        functional.linear.copy_(theta[:n_w].view_as(functional.linear))
        functional.e0.copy_(theta[n_w:])
    return {str(k): v for k, v in results.items()}


class FunctionalEnergy:
    """Exact energy and gradient of design 2 at a geometry: the network's F, S(R), P and E_nn under autograd."""

    def __init__(self, model, functional, numbers, basis, n_occ, base):
        self.model, self.functional, self.numbers, self.basis, self.n_occ = model, functional, numbers, basis, n_occ
        self.base = base

    def __call__(self, positions_bohr):
        from ase_wavecalc.energy import one_electron_matrices

        pos = torch.tensor(np.asarray(positions_bohr, dtype=np.float64), requires_grad=True)
        e, dm = base_energy(self.model, self.numbers, pos, self.basis, self.base)
        if dm is None:
            fock = fock_of(self.model, self.numbers, pos[None])[0]
            overlap, _ = one_electron_matrices(self.numbers, pos, self.basis)
            dm = closed_shell_density(fock, overlap, self.n_occ)
        e = e + self.functional(self.numbers, dm)
        (g,) = torch.autograd.grad(e, pos)
        return float(e.detach()), g.numpy()


def evaluate(energy_fn, data, rows):
    de, df = [], []
    for i in rows:
        e, g = energy_fn(data["positions_bohr"][i])
        de.append((e - data["e_tot"][i]) * 27211.386)
        df.append(np.abs(g - data["gradient"][i]).reshape(-1) * 51422.067)
    de = np.asarray(de)
    return {"n_frames": len(rows), "energy_mae_mev": float(np.abs(de).mean()),
            "energy_mae_offset_removed_mev": float(np.abs(de - de.mean()).mean()),
            "force_mae_mev_a": float(np.concatenate(df).mean()), "force_max_mev_a": float(np.concatenate(df).max())}


def md_stability(energy_fn, numbers, data, rows, temperatures, seeds, steps):
    """Langevin runs (0.5 fs, friction 0.01/fs) from a training geometry, stopped at a changed bond graph
    or a closed gap: steps completed per run."""
    from ase import Atoms, units
    from ase.calculators.calculator import Calculator, all_changes
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from ase_wavecalc.domain import bonded_pairs

    class _Calc(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            e, g = energy_fn(atoms.positions / units.Bohr)
            self.results = {"energy": e * units.Hartree, "forces": -g * units.Hartree / units.Bohr}

    def bonds(atoms):
        return {(int(a), int(b)) for a, b in bonded_pairs(atoms.numbers, atoms.positions, 1.2)}

    runs = []
    for T in temperatures:
        for seed in seeds:
            atoms = Atoms(numbers=numbers, positions=data["positions_bohr"][rows[0]] * units.Bohr)
            atoms.calc = _Calc()
            ref = bonds(atoms)
            MaxwellBoltzmannDistribution(atoms, temperature_K=T, rng=np.random.default_rng(seed))
            dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=T, friction=0.01 / units.fs,
                           rng=np.random.default_rng(seed))
            done, reason = 0, "completed"
            try:
                for done in range(1, steps + 1):
                    dyn.run(1)
                    if done % 10 == 0 and bonds(atoms) != ref:
                        reason = "bond graph changed"
                        break
            except Exception as exc:   # a closed gap (CalculationFailed / ClosedGapError)
                done -= 1              # step `done` did not complete
                reason = f"{type(exc).__name__}: {exc}"[:120]
            runs.append({"temperature_K": T, "seed": seed, "steps": done, "stopped": reason})
            print(f"  MD {T} K seed {seed}: {done} steps ({reason})", flush=True)
    return runs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ethanol-pbe-def2svp", help="model whose (frozen) Fock network gives P")
    ap.add_argument("--dataset", type=Path, default=Path("data/ethanol_pbe_def2svp.db"))
    ap.add_argument("--train-frames", type=int, default=None, help="use the first N training frames (default all)")
    ap.add_argument("--force-frames", type=int, default=None,
                    help="frames (of the training frames) whose dP/dR is precomputed for the force loss (default all)")
    ap.add_argument("--val-frames", type=int, default=None, help="validation frames used (default all)")
    ap.add_argument("--base", choices=["nuclear", "electronic"], default="nuclear",
                    help="physical part beside the learned functional: E_nn (design 2 as stated) or "
                         "E_nn + 1/2 Tr[P (F + h)] of the network's F (DeePHF-like)")
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=60.0, help="training wall-time budget")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--w-energy", type=float, default=20.0)
    ap.add_argument("--w-forces", type=float, default=1000.0)
    ap.add_argument("--md-steps", type=int, default=0)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[300.0, 500.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=20, help="timed energy+forces calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from _density_functional import DensityFunctional
    from ase_wavecalc.model.io import load_model
    from ase_wavecalc.validation import n_occupied

    info = machine_info()
    model, card = load_model(args.model, dtype=torch.float64)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    basis = card["config"]["basis"]
    data, rows = load_frames(args.dataset, card)
    numbers = np.asarray(data["numbers"])
    n_occ = n_occupied(numbers, 0)
    train_rows = rows["train"][: args.train_frames] if args.train_frames else rows["train"]
    force_rows = train_rows[: args.force_frames] if args.force_frames else train_rows
    val_rows = rows["val"][: args.val_frames] if args.val_frames else rows["val"]
    t0 = time.perf_counter()
    tr = precompute(model, data, train_rows, basis, n_occ, "train energies", jacobian=False, base=args.base)
    trf = precompute(model, data, force_rows, basis, n_occ, "train forces", jacobian=True, base=args.base)
    va = precompute(model, data, val_rows, basis, n_occ, "val", jacobian=True, base=args.base)
    t_pre = time.perf_counter() - t0
    functional = DensityFunctional(basis, card["config"]["elements"], hidden=args.hidden)
    functional.set_statistics(numbers, functional.descriptors(numbers, tr["dm"]))
    linear_fit = fit_linear(functional, numbers, tr, trf, va, args.w_energy, args.w_forces)
    t1 = time.perf_counter()
    curve = train(functional, numbers, tr, trf, va, args.minutes, args.epochs, args.batch_size, args.w_energy,
                  args.w_forces, args.lr, args.seed)
    t_train = time.perf_counter() - t1
    refit_offsets(functional, numbers, tr)
    energy_fn = FunctionalEnergy(model, functional, numbers, basis, n_occ, args.base)
    test = evaluate(energy_fn, data, rows["test"])
    times = []
    rng = np.random.default_rng(0)
    pos = data["positions_bohr"][rows["test"][0]]
    for _ in range(args.repeats + 3):
        p = pos + rng.normal(scale=1e-3, size=pos.shape)
        s = time.perf_counter()
        energy_fn(p)
        times.append(time.perf_counter() - s)
    ms_call = 1000 * float(np.median(times[3:]))
    runs = (md_stability(energy_fn, numbers, data, rows["train"], args.temperatures, args.seeds, args.md_steps)
            if args.md_steps else [])
    result = {"model": args.model, "dataset": str(args.dataset), "n_train_frames": len(train_rows),
              "n_force_frames": len(force_rows), "base": args.base, "n_val_frames": len(val_rows), "precompute_s": t_pre, "train_s": t_train,
              "descriptor_features": functional.descriptors.n_features, "hidden": args.hidden,
              "loss": {"energy": args.w_energy, "forces": args.w_forces}, "test": test, "ms_per_call": ms_call,
              "linear_fit": linear_fit, "learning_curve": curve, "md": runs, "machine": finish_machine_info(info)}
    label = "E_nn" if args.base == "nuclear" else "E_nn + 1/2 Tr[P(F+h)]"
    rows_out = [[f"design 2: learned functional of P + {label}", f"{test['force_mae_mev_a']:.1f}",
                 f"{test['energy_mae_mev']:.2f}", f"{ms_call:.1f}",
                 (f"{sum(r['steps'] >= args.md_steps for r in runs)}/{len(runs)}" if runs else "-")]]
    print(machine_line(info))
    print(table(["energy path", "force MAE (meV/A)", "energy MAE (meV)", "ms/call", "MD runs completed"], rows_out))
    write_result(f"density_functional_{args.base}_{args.dataset.stem}", result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
