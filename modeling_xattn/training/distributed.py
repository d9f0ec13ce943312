"""Collectives the training library shares across processes."""

from __future__ import annotations

import torch
import torch.distributed as dist

# One gloo group over the default group's processes (created on first use, by every process at the same call, as
# any collective): flags the host decides travel over it.
_host_groups: dict[int, object] = {}


def host_group():
    """A process group for host-side values (a flag, a clock): gloo, so that a collective over it never waits for the
    device's queue, as one over NCCL would (each such wait drains the GPU). The default group where it is gloo."""
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    key = id(dist.group.WORLD)
    if key not in _host_groups:
        _host_groups[key] = dist.new_group(backend="gloo")
    return _host_groups[key]


def any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is true on this process or on any other (a collective: every process must call it). It runs
    on the host (`host_group`), so a training step that calls it does not wait for the device."""
    if accelerator is None or accelerator.num_processes == 1:
        return bool(flag)
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, group=host_group())
    return bool(value.item() > 0)


def slowest_clock(accelerator, minutes: float) -> float:
    """The largest of every process's `minutes` (a collective on the host, as `any_process`)."""
    if accelerator is None or accelerator.num_processes == 1:
        return minutes
    value = torch.tensor([minutes], dtype=torch.float64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=host_group())
    return float(value.item())
