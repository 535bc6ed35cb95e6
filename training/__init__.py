"""Fine-tuning the reranker on interaction logs, validated with the evaluation protocol and
exported to a model repository version.

Modules: ``config`` (TrainConfig), ``data`` (split, retriever, examples), ``encoder``
(rendering + tokenizing lists, ID dropout), ``model`` (base model, item tokens, optimizer),
``loop`` (the optimizer steps), ``budget``, ``checkpoint``, ``threads``, ``progress``,
``validate`` (validation, the blend and the text offset), ``publish`` (the model version),
and ``train`` (the run, step by step)."""

import os

# On a shared machine, OpenMP threads that spin while waiting turn every small op into a
# scheduling fight: measured here under load, 2 spinning threads trained at 22 pairs/s, 2
# passive ones at 194, 1 thread at 221. Must be set before torch loads its OpenMP runtime,
# hence here: every training module is imported through this package first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
