"""Shared pieces of the training tests (test_train.py, test_train_stages.py, test_transfer.py).

The water dataset behind the session fixture ``water_db`` (defined in conftest.py, so that it is built once
per session), the small stand-in network and its config, and the config of the tiny real model.
"""
from __future__ import annotations

import numpy as np
import torch

from ase_wavecalc.train.config import parse_config

N_FRAMES = 24
BASIS = "sto-3g"


def write_water_db(path):
    """24 distorted water molecules, RHF/STO-3G (gradient left zero), as a dataset file at ``path`` (frame
    ids 100, 102, ...)."""
    from pyscf import lib

    from ase_wavecalc import dataset
    from ase_wavecalc.reference import reference_settings, run_reference
    from ase_wavecalc.units import BOHR

    rng = np.random.default_rng(0)
    base = np.array([[0.0, 0.0, 0.2217], [0.0, 1.4309, -0.8867], [0.0, -1.4309, -0.8867]])  # Bohr
    numbers = [8, 1, 1]
    db = dataset.connect(path, create=True)
    dataset.update_metadata(db, reference_settings("hf", BASIS, conv_tol=1e-10))
    # one OpenMP thread: 7x7 matrices gain nothing from threads, and spinning threads on a busy machine
    # make PySCF several times slower
    with db, lib.with_omp_threads(1):
        for i in range(N_FRAMES):
            pos = base + rng.normal(scale=0.1, size=base.shape)
            ref = run_reference(numbers, pos * BOHR, method="hf", basis=BASIS, conv_tol=1e-10,
                                gradient=False)
            dataset.write_frame(db, 100 + 2 * i, numbers, pos, ref)
    return path


class StandIn(torch.nn.Module):
    """Distances -> symmetric (nao, nao) matrix: enough to exercise the trainer."""

    def __init__(self, config):
        super().__init__()
        self.config = dict(config)
        nao, n_pairs = config["nao"], config["n_atoms"] * (config["n_atoms"] - 1) // 2
        self.mean = torch.nn.Parameter(torch.zeros(nao, nao))
        self.hidden = torch.nn.Linear(n_pairs, config.get("hidden", 16))
        self.out = torch.nn.Linear(config.get("hidden", 16), nao * nao)
        self.n_atoms = config["n_atoms"]
        self.nao = nao
        self.scale = float(config.get("scale", 10.0))  # F elements reach -20 Hartree (O 1s)

    def forward(self, numbers, positions_bohr, batch):
        b = positions_bohr.shape[0] // self.n_atoms
        pos = positions_bohr.reshape(b, self.n_atoms, 3)
        i, j = torch.triu_indices(self.n_atoms, self.n_atoms, 1)
        d = (pos[:, i] - pos[:, j]).norm(dim=-1) - 2.0
        m = self.scale * (self.mean + self.out(torch.tanh(self.hidden(d))).reshape(b, self.nao, self.nao))
        return {"fock": 0.5 * (m + m.transpose(-1, -2))}


def build_stand_in(config):
    return StandIn(config)


def make_config(db, **run):
    table = {
        "data": {"seed": 3, "datasets": [{"path": str(db), "train": 16, "val": 4, "test": 4}]},
        "model": {"nao": 7, "n_atoms": 3, "hidden": 16},
        "loss": {"fock_mse": 1.0, "fock_mae": 1.0, "orbital_energy": 0.01},
        "optimizer": {"lr": 1e-2, "ema_decay": 0.9, "grad_clip": 5.0},
        "scheduler": {"patience": 2, "factor": 0.5},
        "run": {"batch_size": 4, "max_epochs": 30, "progress": False, "checkpoint_every_min": 10.0,
                "threads": 1, **run},
    }
    return parse_config(table)


def quiet(_line):
    pass


TINY_MODEL = ("channels = 8\nnum_layers = 1\npair_channels = 8\npair_hidden = 16\n"
              "radial_hidden = 16\nnum_radial = 4\npair_num_radial = 4")


def write_tiny_config(path, db, model="", loss="", optimizer="lr = 5e-3\nema_decay = 0.5", run="",
                      max_epochs=2):
    """A training config for the tiny real model on ``db`` (12/4/4 frames), written to ``path``."""
    loss = loss or "fock_mse = 1.0\nfock_mae = 1.0"
    path.write_text(f"""[data]
seed = 0
[[data.datasets]]
path = "{db}"
train = 12
val = 4
test = 4

[model]
{TINY_MODEL}
{model}

[loss]
{loss}

[optimizer]
{optimizer}

[run]
batch_size = 4
max_epochs = {max_epochs}
progress = false
threads = 1
{run}
""")
    return path
