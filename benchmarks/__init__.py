"""The performance benchmark, kept outside the installed package as transformers keeps its `benchmark/`: a
developer's tool, run from a clone (`python scripts/benchmark.py`, whose docstring lists the sections, or
`python -m benchmarks.run`). Every figure is a ratio measured in one run on one machine, side by side.

One module per section, each holding what it measures (`bench(args, device) -> dict`) and the table rows it reports
(`rows(result) -> [(figure, measured, ratio, target)]`) side by side: fusion, generation, retrieval, training,
inference, precision, finetune, rerank_batch, step_profile, photo_cache. Beside them: `options` (the command's
options), `common` (device, autocast, timer, FLOP counter, matmul peak, machine line), `steps` (the training step the
training figures time), `memory` (the memory probe, a mode of its own: `python -m benchmarks.memory --mode saving`),
`sections` (the modules by name, in run and table order), `report` (the markdown table, merging runs) and `run` (the
command).
"""
