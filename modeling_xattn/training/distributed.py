"""Collectives the training library shares across processes."""

from __future__ import annotations

import torch


def any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is true on this process or on any other (a collective: every process must call it)."""
    if accelerator is None or accelerator.num_processes == 1:
        return bool(flag)
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)
