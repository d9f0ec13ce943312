"""The training losses between two logs, kept on the device: a step adds its losses without waiting for the device
(no `.item()`, no `if` on a tensor), and `read` brings them to the host once every `--logging_steps`, as the mean
per optimiser step since the last read, with the first step whose loss was not finite."""

from __future__ import annotations

import torch

from modeling_xattn.training.tasks import loss_keys

NO_BAD_STEP = 2**62  # "no non-finite loss since the last read", as a number a device minimum can compare


class RunningLosses:
    """Sums of each loss over the batches since the last `read` (a head's loss only where its batch had its
    targets), and the first non-finite total loss's step, all device tensors."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.first_bad_step: torch.Tensor | None = None

    def add(self, out, step: int) -> None:
        """Add one batch's losses (`out.loss` and each task's), for optimiser step `step` (1-based)."""
        for key in ("loss", *loss_keys()):
            value = out.get(key)
            if value is None:
                continue
            value = value.detach().float()
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1
        # float32 holds 2**62 and every step below 2**24 exactly, on every device (MPS has no float64)
        total = out.loss.detach()
        bad = torch.where(torch.isfinite(total), torch.full_like(total, NO_BAD_STEP, dtype=torch.float32),
                          torch.full_like(total, step, dtype=torch.float32))
        self.first_bad_step = bad if self.first_bad_step is None else torch.minimum(self.first_bad_step, bad)

    def __bool__(self) -> bool:
        return bool(self.counts)

    def read(self) -> tuple[dict[str, float], int | None]:
        """The mean of each loss since the last read (`train_loss`, `train_loss_ce`, ...) and the first step whose
        total loss was not finite (None when none was); one transfer from the device. Starts the next interval."""
        keys = list(self.sums)
        values = torch.stack([self.sums[key] for key in keys] + [self.first_bad_step]).tolist()
        means = {("train_loss" if key == "loss" else f"train_{key}"): value / self.counts[key]
                 for key, value in zip(keys, values)}
        bad = int(values[-1])
        self.sums, self.counts, self.first_bad_step = {}, {}, None
        return means, (None if bad == NO_BAD_STEP else bad)
