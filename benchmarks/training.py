"""training: one training step of the --model_size preset (the multi-task loss, Adam, --batch_size): samples/s,
model FLOPs per sample (torch's FLOP counter), MFU against this machine's measured matmul peak, the peak memory with
and without `set_memory_saving` (each in a process of its own: `memory.py`), and with --compile the compiled step at
--batch_size and, on CUDA, eager and compiled at the largest batch that fits."""

from __future__ import annotations

import torch

from benchmarks import common, steps
from benchmarks import memory as memory_probe

TARGET_MFU = ">= 30% MFU on CPU"
TARGET_GPU = ">= 25% MFU (GPU, bf16)"
TARGET_MEMORY = ">= 40% less peak memory when saving"


def bench(args, device) -> dict:
    # the probes first, while this process is small: a full-size default-mode probe next to a trained-up benchmark
    # process would not fit in a 24 GiB machine
    memory = {mode: memory_probe.run_probe(args, mode) for mode in ("default", "saving")}
    model, step, forward_backward = steps.training_setup(args, device, memory_saving=False)
    flops = common.count_flops(forward_backward)
    model.zero_grad(set_to_none=True)
    rate_before = common.matmul_rate(device, args.precision)
    timing = common.measure(step, device, args.repeats, args.warmup)
    model = step = forward_backward = None
    common.free(device)
    rate = max(rate_before, common.matmul_rate(device, args.precision))  # the peak, measured on both sides of the steps
    achieved = flops / timing["median_s"]
    per_sample = flops / args.batch_size
    variants = {}
    if args.compile:
        # compiled at --batch_size, then eager and compiled at the largest batch that fits (CUDA); the FLOPs per
        # sample are the eager count (compilation changes the kernels, not the arithmetic)
        sizes = [args.batch_size] + ([largest_batch(args, device)] if device.type == "cuda" else [])
        for size in dict.fromkeys(sizes):
            for compiled in ((True,) if size == args.batch_size else (False, True)):
                name = f"{'compiled' if compiled else 'eager'}_batch{size}"
                run = time_training_variant(args, device, size, compiled)
                if "error" not in run:
                    run.update({"batch_size": size, "samples_per_s": size / run["median_s"],
                                "mfu": per_sample * size / run["median_s"] / rate,
                                "speedup_vs_eager_batch": timing["median_s"] / run["median_s"] * size / args.batch_size})
                variants[name] = run
    return {
        "config": f"{args.model_size} preset, multi-task loss (Formula 4), batch {args.batch_size}, Adam",
        "step": timing,
        "samples_per_s": args.batch_size / timing["median_s"],
        "model_flops_per_sample": per_sample,
        "variants": variants,
        "achieved_flops_per_s": achieved,
        "matmul_flops_per_s": rate,
        "mfu": achieved / rate,
        "memory": memory,
        "peak_memory_reduction": 1 - memory["saving"]["peak_bytes"] / memory["default"]["peak_bytes"],
        "training_memory_reduction": 1 - memory["saving"]["training_bytes"] / memory["default"]["training_bytes"],
    }


def time_training_variant(args, device, size: int, compiled: bool) -> dict:
    """Timed training steps at batch `size`, eager or compiled; `{"error": ...}` when it does not fit. Compiled
    variants start from an empty compile cache, so each is compiled for its own static shapes."""
    if compiled:
        torch._dynamo.reset()
    try:
        setup = steps.training_setup(args, device, False, batch_size=size, compiled=compiled)  # (model, step, fwd+bwd)
        model, step = setup[0], setup[1]
        result = common.measure(step, device, args.repeats, max(args.warmup, 3))  # the warm-up absorbs compiling
        if compiled:
            # graph breaks of the compiled forward: each one splits the step and waits for the host
            batch = steps.training_batch(model.config, size, device)
            with common.autocast(device, args.precision):
                result["graph_breaks"] = torch._dynamo.explain(model)(**batch).graph_break_count
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not common.out_of_memory(error):
            raise
        result = {"error": "out of memory"}
    setup = model = step = None  # nothing of this variant stays referenced
    common.free(device)
    return result


def largest_batch(args, device) -> int:
    """The largest batch (doubling from --batch_size, at most --max_batch_size) whose eager training step fits in
    the GPU's memory."""
    fits, size = args.batch_size, args.batch_size * 2
    while size <= args.max_batch_size:
        if "error" in time_training_variant(common.with_values(args, repeats=1, warmup=1), device, size, compiled=False):
            break
        fits, size = size, size * 2
    return fits


def rows(t: dict) -> list[tuple]:
    gib = 2**30
    rows = [("training step (samples/s, FLOPs/sample)", f"{t['samples_per_s']:.2f} samples/s, "
             f"{t['model_flops_per_sample'] / 1e9:.1f} GFLOP/sample", "", ""),
            ("MFU vs measured matmul rate", f"{t['achieved_flops_per_s'] / 1e9:.1f} of "
             f"{t['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s", f"{100 * t['mfu']:.1f}%", TARGET_MFU)]
    for name, v in t.get("variants", {}).items():
        kind, size = name.split("_batch")
        measured = v.get("error") or (f"{v['samples_per_s']:.2f} samples/s, MFU {100 * v['mfu']:.1f}%"
                                      + (f", {v['graph_breaks']} graph breaks" if "graph_breaks" in v else ""))
        ratio = "" if "error" in v else f"{v['speedup_vs_eager_batch']:.2f}x"
        rows.append((f"training step, {kind}, batch {size}", measured, ratio, TARGET_GPU))
    m = t["memory"]
    rows.append(("peak memory, default vs memory saving", f"{m['default']['peak_bytes'] / gib:.2f} vs "
                 f"{m['saving']['peak_bytes'] / gib:.2f} GiB (training part {m['default']['training_bytes'] / gib:.2f}"
                 f" vs {m['saving']['training_bytes'] / gib:.2f} GiB)", f"-{100 * t['peak_memory_reduction']:.0f}% "
                 f"(-{100 * t['training_memory_reduction']:.0f}%)", TARGET_MEMORY))
    return rows
