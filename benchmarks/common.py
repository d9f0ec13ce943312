"""What every section shares: the device, autocast, the timer, the FLOP counter, this machine's matmul peak, and
the line that labels a report with the machine and the versions."""

from __future__ import annotations

import contextlib
import copy
import platform
import statistics
import time

import torch

from modeling_xattn.training.inference import synchronize


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str, on_cpu: bool = False):
    """bf16 autocast on CUDA (unless `--precision fp32`); fp32 on the CPU, where bf16 autocast measured slower (the
    precision section), unless `on_cpu` asks for it."""
    if precision == "bf16" and (device.type == "cuda" or on_cpu):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure(fn, device, repeats: int, warmup: int) -> dict:
    """Median (and all) wall times of `fn()` in seconds, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(repeats, 1)):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "times_s": [round(t, 6) for t in times]}


def count_flops(fn) -> int:
    """Model FLOPs of one call of `fn` (matmuls, convolutions, attention) by torch's FLOP counter. Attention runs
    through SDPA's math backend while counting, so its two matmuls are counted on every device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return int(counter.get_total_flops())


def matmul_rate(device, precision: str, repeats: int = 10) -> float:
    """This machine's peak matmul rate in FLOP/s in the precision the figures ran in, which MFU is measured against:
    the fastest of `repeats` products (the peak, so a slow moment of a shared machine cannot inflate MFU). The product
    is 2048^3 on a CPU and 8192^3 on a GPU, large enough to reach each one's peak."""
    size = 8192 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if device.type == "cuda" and precision == "bf16" else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = measure(lambda: a @ b, device, repeats, warmup=2)
    return 2 * size**3 / min(timing["times_s"])


def free(device):
    """Release what the last figure held: its model, batch and closures must be unreferenced already."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def out_of_memory(error: BaseException) -> bool:
    """An allocation failure, however it surfaces: torch's OutOfMemoryError, or a RuntimeError from cuBLAS/cuDNN or
    from a compiler backend that ran out while compiling."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def with_values(args, **values):
    """A copy of `args` with `values` set (its smoke sizes kept: no re-initialisation)."""
    changed = copy.copy(args)
    for name, value in values.items():
        setattr(changed, name, value)
    return changed


def versions() -> str:
    """The versions the figures depend on."""
    import accelerate
    import transformers

    cuda = f", CUDA {torch.version.cuda}" if torch.cuda.is_available() else ""
    return (f"torch {torch.__version__}{cuda}, transformers {transformers.__version__}, accelerate "
            f"{accelerate.__version__}")


def machine_description(device, precision: str) -> str:
    if device.type == "cuda":
        mode = "bf16 autocast" if precision == "bf16" else "fp32"
        return f"{torch.cuda.get_device_name(device)} ({mode}), {versions()}"
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, fp32, {versions()}"
