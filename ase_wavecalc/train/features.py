"""What a trained readout model's energy MLP sees, for a set of frames: the per-atom standardized invariants.

The heads fitted after training on frozen trunks (the linear transfer head, ``transfer.py``; the uncertainty
committee, ``committee.py``) read exactly the readout's inputs. Since the trunks do not change, those inputs
are computed once per frame, here, in float64.
"""
from __future__ import annotations

import copy

import numpy as np
import torch

__all__ = ["readout_features"]


def readout_features(model: torch.nn.Module, table, rows, batch_size: int = 16) -> dict:
    """For the frames ``rows`` of a FrameTable (one composition), returns

    | key | shape | unit |
    |---|---|---|
    | x | (F, n_atoms, n_inv) | standardized invariants (``readout_norm`` applied when the model has one) |
    | element | (n_atoms,) long | column of each atom's element in ``model.config["elements"]`` |
    | energy | (F,) | Hartree, the model's energy without its transfer head |
    | e0 | (F,) | Hartree, the sum of the per-element offsets |
    """
    m = copy.deepcopy(model).to(torch.float64).cpu().eval()   # features on the CPU, wherever the model trains
    elements = [int(z) for z in m.config["elements"]]
    element = torch.as_tensor([elements.index(int(z)) for z in table.numbers.tolist()])
    n_at = len(element)
    xs, energies = [], []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            batch = table.batch(np.asarray(rows)[i:i + batch_size], dtype=torch.float64)
            out = m(batch.numbers, batch.positions_bohr, batch.batch, energy_only=True)
            inv = out["readout_inputs"]
            if m.readout_norm is not None:
                inv = m.readout_norm(inv)
            xs.append(inv.reshape(batch.n_structures, n_at, -1))
            energies.append(out["energy"] - out.get("transfer_correction", 0.0))
        e0 = m.element_energy_offsets[element].sum()
    energy = torch.cat(energies)
    return {"x": torch.cat(xs), "element": element, "energy": energy, "e0": torch.full_like(energy, float(e0))}
