"""Which candidates a short fit should label first: the fit's readout trained on the first frames of its
labelled pool in two orders, errors on its held-out test frames through ``WaveCalculator``.

The two orders (``ase_wavecalc.fit.candidates``): one farthest-point order over all candidates
(``farthest_point_order``, the recipe's ``sampling.order = "farthest"``) and farthest-point order within each
source with the sources interleaved by size (``interleaved_order``, ``"interleaved"``). For each, the first
``--frames`` labelled frames of the fit's ``pool.db`` go to a dataset file of their own; the readout trains on
them from the fit's Fock network (``--fock-run``, frozen; settings of the recipe's readout) for ``--minutes``
on one core, both orders side by side; then each model goes through ``WaveCalculator`` on the fit's
``test.db``. Needs a fit's work directory (``candidates.npz``, ``pool.db``, ``test.db``, ``runs/``), which a
finished fit keeps beside its model. Prints a table, writes JSON.

    python benchmarks/fit_candidate_order.py models/malondialdehyde-pbe-def2svp.work --frames 140 --minutes 12
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import table, write_result

CONFIG = """[data]
seed = 0

[[data.datasets]]
path = "{db}"
train = {train}
val = {val}
test = 0

[model]
{model}

[loss]
energy = 100.0
forces = 1000.0

[optimizer]
ema_decay = 0.99
grad_clip = 10.0
lr = 0.001

[scheduler]
factor = 0.5
min_lr = 1e-05
threshold = 0.001
patience = 40

[run]
batch_size = 4
checkpoint_every_min = 3.0
max_epochs = 100000
max_time_min = {minutes}
precision = "float32"
trainable = "energy_readout"
threads = 1
progress = false
seed = 0
init_weights = "{fock}"
"""


def subsets(work: Path, n: int) -> dict[str, list[int]]:
    """The first ``n`` labelled pool frames in each order: {"farthest": ids, "interleaved": ids}."""
    from ase_wavecalc.dataset import connect, frame_ids
    from ase_wavecalc.fit.candidates import interleaved_order

    cand = np.load(work / "candidates.npz")
    done = np.array(sorted(frame_ids(connect(work / "pool.db"), converged=True)))
    # a fit's pool frame ids are the candidates' positions in its queue: the farthest-point order over all of
    # them in fits before the interleaved order
    names, counts = np.unique(cand["train_source"], return_counts=True)     # shares of the whole candidate pool
    sub = interleaved_order(cand["train"][done], cand["train_source"][done], shares=dict(zip(names, counts)))
    if not _is_farthest(cand["train"]):
        raise SystemExit("this fit's candidates are not in one farthest-point order (an interleaved fit): the "
                         "comparison needs a fit made with sampling.order = \"farthest\"")
    return {"farthest": done[:n].tolist(), "interleaved": done[sub][:n].tolist()}


def _is_farthest(train: np.ndarray, k: int = 6) -> bool:
    """Whether the first ``k`` candidates are in farthest-point order."""
    from ase_wavecalc.fit.candidates import farthest_point_order
    return farthest_point_order(train)[:k].tolist() == list(range(k))


def evaluate(model_dir: Path, test_db: Path) -> dict:
    from ase import Atoms
    from ase.units import Bohr, Hartree

    from ase_wavecalc import WaveCalculator
    from ase_wavecalc.dataset import read_dataset
    from ase_wavecalc.units import bohr_to_angstrom

    d = read_dataset(test_db)
    calc = WaveCalculator(model=str(model_dir), out_of_domain="reference")
    e, f = [], []
    for k in range(len(d["e_tot"])):
        atoms = Atoms(numbers=d["numbers"], positions=bohr_to_angstrom(d["positions_bohr"][k]))
        atoms.calc = calc
        e.append(abs(atoms.get_potential_energy() - d["e_tot"][k] * Hartree))
        f.append(np.abs(atoms.get_forces() + d["gradient"][k] * Hartree / Bohr).mean())
    e, f = 1e3 * np.array(e), 1e3 * np.array(f)
    half = len(f) // 2               # the fit's test frames: the 300 K run, then the 500 K run
    return {"energy_mae_meV": e.mean(), "force_mae_meV_A": f.mean(), "force_mae_300K": f[:half].mean(),
            "force_mae_500K": f[half:].mean(), "n_test": len(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="a `wavecalc fit` work directory")
    parser.add_argument("--fock-run", default=None, help="run directory of the Fock network (default: the last "
                                                         "runs/fock* of the work directory)")
    parser.add_argument("--frames", type=int, default=140)
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--out", default="/tmp/fit_candidate_order")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work, out = Path(args.workdir).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fock = Path(args.fock_run).resolve() if args.fock_run else sorted((work / "runs").glob("fock*"))[-1]
    model_toml = "\n".join(line for line in (fock / "config.toml").read_text().split("[model]")[1]
                           .split("\n[")[0].strip().splitlines())
    model_toml += ('\nenergy_path = "readout"\nreadout_hidden = 64\nenergy_layers = 2\nenergy_channels = 32\n'
                   'energy_lmax = 2\nreadout_standardize = true')
    cand = np.load(work / "candidates.npz")
    procs, rows, result = {}, [], {"workdir": str(work), "fock_run": str(fock), "frames": args.frames,
                                   "minutes": args.minutes, "orders": {}}
    from ase.db import connect as ase_connect
    for order, ids in subsets(work, args.frames).items():
        db = out / f"{order}.db"
        shutil.copy(work / "pool.db", db)
        keep = set(ids)
        con = ase_connect(db)
        con.delete([r.id for r in con.select(include_data=False) if "frame" in r and int(r.frame) not in keep])
        val = max(2, round(0.08 * len(ids)))
        (out / f"{order}.toml").write_text(CONFIG.format(db=db, train=len(ids) - val, val=val, model=model_toml,
                                                         minutes=args.minutes, fock=fock))
        src, counts = np.unique(cand["train_source"][ids], return_counts=True)
        result["orders"][order] = {"sources": dict(zip(src.tolist(), counts.tolist()))}
        shutil.rmtree(out / f"run_{order}", ignore_errors=True)
        procs[order] = subprocess.Popen([sys.executable, "-m", "ase_wavecalc.cli", "train", str(out / f"{order}.toml"),
                                         "--out", str(out / f"run_{order}")], stdout=subprocess.DEVNULL,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"})
    for order, proc in procs.items():
        if proc.wait() != 0:
            raise SystemExit(f"training on the {order} subset failed (see {out}/run_{order}/train.log)")
        subprocess.run([sys.executable, "-m", "ase_wavecalc.cli", "export", str(out / f"run_{order}"),
                        str(out / f"model_{order}"), "--force"], check=True, capture_output=True)
        m = evaluate(out / f"model_{order}", work / "test.db")
        result["orders"][order].update(m)
        rows.append([order, " / ".join(f"{k} {v}" for k, v in result["orders"][order]["sources"].items()),
                     f"{m['force_mae_meV_A']:.1f}", f"{m['force_mae_300K']:.1f}", f"{m['force_mae_500K']:.1f}",
                     f"{m['energy_mae_meV']:.2f}"])
    print(table(["order", "sources of the frames", "force MAE", "300 K run", "500 K run", "energy MAE"], rows))
    print(f"wrote {write_result('fit_candidate_order', result, args.json)}")


if __name__ == "__main__":
    main()
