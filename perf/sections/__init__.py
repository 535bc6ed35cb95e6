"""The sections of the suite (``perf.run_all``), grouped by what they measure. Each section
is a function that takes what it needs (a ``context.Suite``, the running stack, its inputs)
and returns its own result; ``run_all.main`` files each result under its results.json key.

context.py  budgets, the suite context (output folder, budget, log), the served model
setup.py    the served model version, the MovieLens store, the workload
engines.py  [1/6] in-process engine variants: throughput, share of peak, agreement with fp32
triton.py   [3/6] Triton config tuning, [4/6] perf_analyzer on the model
gateway.py  [5/6] gateway: closed and open loop, overhead per request, event to effect
side.py     [6/6] side by side: engine in-process, CrossEncoder, rerankd
"""
