"""``wavecalc fit``: one command from a molecule to a model (sampling, labelling, training, active learning,
export and report), resumable at any point and bounded by one wall-time budget.

| module | job |
|---|---|
| ``recipe`` | the TOML recipe (shipped default ``recipes/default.toml``, user overrides), phase deadlines |
| ``molecule`` | the molecule from a name, SMILES or file; refusals before any work; cost of a reference |
| ``state`` | ``fit.json``: what is done, the fit's clock over all invocations, the work-directory lock |
| ``conformers`` | the low minima of the molecule (RDKit embeddings relaxed with the sampling driver) |
| ``candidates`` | relaxed start, MD (from the conformers) and normal-mode candidates in an order interleaved by
  source, test geometries |
| ``labelling`` | labeller processes (or a Dask executor) over the label queue, until a deadline |
| ``training`` | training configs from the recipe, time-bounded runs of the ``Trainer`` |
| ``active`` | MD on the committee model and the frames worth labelling |
| ``report`` | test errors through ``WaveCalculator``, MD stability, timing, report, card, npz parts |
| ``card`` | what a fit card records, read back: the start geometry, the folder of its npz parts |
| ``pipeline`` | the phases in order against the budget |
| ``cli_fit`` | the sub-command |
"""
