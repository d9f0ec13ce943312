"""The memory probe: the peak memory of two training steps, default or with memory saving, measured in a process of
its own, so that the peak is the probe's and not a larger benchmark process's. The training section starts it twice;
it also runs alone:

    python -m benchmarks.memory --mode saving --model_size base --batch_size 32 --device auto --precision bf16

from the clone's root, which prints one JSON line: `peak_bytes`, `model_ready_bytes` (after building the model and
its batch) and `training_bytes` (their difference).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from benchmarks import common, steps
from modeling_xattn.training.inference import synchronize
from modeling_xattn.training.options import option, parse_options

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ProbeArguments:
    """What to probe: the memory mode, and the training step's preset, batch, device and precision (the benchmark's
    options of the same names)."""

    _argument_group_name = "memory probe"

    mode: Literal["default", "saving"] = option("default", "default, or saving: with `set_memory_saving`")
    model_size: str = option("base", "preset")
    batch_size: int = option(32)
    device: str = option("auto", "auto, cpu or cuda")
    precision: Literal["bf16", "fp32"] = option("bf16", "on CUDA: autocast dtype (CPU: fp32)")


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident memory (VmHWM). Not `ru_maxrss`: Linux carries that over from the parent at fork
    and exec, so a probe started by a large benchmark process would report the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def probe(args, mode: str) -> dict:
    """Peak memory of two training steps in `mode` ("default" or "saving": `set_memory_saving`), in this process (CUDA:
    the allocator's peak; CPU: the peak resident memory). Run it in a fresh process (`run_probe`), so that the peak is
    the probe's own."""
    device = common.pick_device(args.device)
    _, step, _ = steps.training_setup(args, device, mode == "saving")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        ready = torch.cuda.memory_allocated(device)
    else:
        ready = current_rss_bytes()
    for _ in range(2):
        step()
    synchronize(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss_bytes()
    return {"peak_bytes": peak, "model_ready_bytes": ready, "training_bytes": peak - ready}


def run_probe(args, mode: str) -> dict:
    """`probe` in a fresh interpreter (`python -m benchmarks.memory`), with `args`' preset, batch, device and
    precision; its JSON line."""
    command = [sys.executable, "-m", "benchmarks.memory", "--mode", mode, "--model_size", args.model_size,
               "--batch_size", str(args.batch_size), "--device", args.device, "--precision", args.precision]
    completed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO)
    if completed.returncode != 0:
        raise RuntimeError(f"memory probe ({mode}) failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    (args,) = parse_options((ProbeArguments,), argv, __doc__)
    result = probe(args, args.mode)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
