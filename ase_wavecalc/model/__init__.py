"""The equivariant Hamiltonian network (``network``), its building blocks and safe save/load.

```python
from ase_wavecalc.model import build_model, default_config, save_model, load_model
model = build_model(default_config(basis="def2-svp", elements=[1, 6, 8]))
out = model(numbers, positions_bohr)        # out["fock"]: (1, nao, nao) Hartree, PySCF AO order
```
"""
from .io import FORMAT_VERSION, ModelFileError, load_model, save_model
from .config import OUTPUT_KEYS, canonical_config, canonical_state_dict
from .network import DEFAULT_CONFIG, MODEL_TYPE, HamiltonianModel, build_model, default_config

__all__ = ["HamiltonianModel", "build_model", "default_config", "DEFAULT_CONFIG", "MODEL_TYPE",
           "save_model", "load_model", "ModelFileError", "FORMAT_VERSION", "OUTPUT_KEYS",
           "canonical_config", "canonical_state_dict"]
