"""Optimisation: parameter groups (backbone rates, weight-decay exclusions), the warm-up/cosine schedule and
Formula 5's decay on a validation loss that stopped falling."""

from __future__ import annotations

import math

import torch

BACKBONE_PREFIXES = ("xattn.text_model.", "xattn.vision_model.features.")


def decay_excluded(model) -> set[str]:
    """Names of the parameters that take no weight decay, as CLIP and BLIP train: biases, norm scales and the other
    vectors and scalars (gates, the logit scale and bias), embedding tables, and attention-pooling queries."""
    embeddings = {f"{module_name}.{name}".lstrip(".") for module_name, module in model.named_modules()
                  if isinstance(module, torch.nn.Embedding) for name, _ in module.named_parameters(recurse=False)}
    return {name for name, param in model.named_parameters()
            if param.ndim < 2 or name in embeddings or name.endswith(".probe")}


def parameter_groups(model, learning_rate, backbone_learning_rate=None, weight_decay=1e-4, decay_exclusions=False):
    """Optimiser groups of the parameters that train (a locked tower's have `requires_grad` off: see the model's
    `lock_text_tower` / `lock_image_tower`): the pretrained towers (ALBERT, DenseNet features) may get their own
    learning rate; with `decay_exclusions`, the parameters `decay_excluded` names get weight decay 0."""
    excluded = decay_excluded(model) if decay_exclusions else set()
    buckets = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        backbone = name.startswith(BACKBONE_PREFIXES)
        buckets.setdefault((backbone, name in excluded), []).append(param)
    groups = []
    for (backbone, no_decay), params in sorted(buckets.items()):
        lr = (backbone_learning_rate or learning_rate) if backbone else learning_rate
        groups.append({"params": params, "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay})
    return groups


class PreviousLossDecay:
    """Formula 5: after every evaluation, when the validation loss is not lower than at the previous evaluation,
    every learning rate is multiplied by β. Unlike `ReduceLROnPlateau`, it compares with the previous evaluation
    (not the best so far) and waits for nothing.

    It keeps the product of the β's applied so far (`factor`) and each group's peak rate as the optimiser was built,
    and `apply(schedule)` sets every rate to peak × factor × schedule (the warm-up/cosine multiple). Its state (the
    previous loss and the factor) goes into accelerate's checkpoints, so a resumed run compares with the evaluation
    before the interruption and goes on at the same rate."""

    def __init__(self, optimizer, beta: float):
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must lie in (0, 1], got {beta!r}")
        self.optimizer = optimizer
        self.beta = beta
        self.previous_loss: float | None = None
        self.factor = 1.0
        self.peak_lrs = [group["lr"] for group in optimizer.param_groups]  # before a resume loads any state

    def step(self, loss: float) -> bool:
        """Record this evaluation's loss; returns whether the learning rates were multiplied by β."""
        loss = float(loss)
        decay = self.previous_loss is not None and loss >= self.previous_loss
        if decay:
            self.factor *= self.beta
            for group in self.optimizer.param_groups:
                group["lr"] *= self.beta
        self.previous_loss = loss
        return decay

    def apply(self, schedule: float = 1.0) -> None:
        """Set every group's learning rate to its peak × Formula 5's factor × `schedule`."""
        for group, peak in zip(self.optimizer.param_groups, self.peak_lrs):
            group["lr"] = peak * self.factor * schedule

    def state_dict(self):
        return {"previous_loss": self.previous_loss, "factor": self.factor}

    def load_state_dict(self, state):
        self.previous_loss = state["previous_loss"]
        # checkpoints written before the factor was kept hold the decayed rates: the factor is their ratio to the peak
        self.factor = state["factor"] if "factor" in state else state["lrs"][0] / self.peak_lrs[0]
        self.apply()


def learning_rate_factor(step: int, max_steps: int, warmup_steps: int = 0, scheduler: str = "constant",
                         time_fraction: float = 0.0) -> float:
    """The schedule's multiple of the peak learning rate for optimiser step `step` (0-based): a linear warm-up over
    `warmup_steps`, then constant or a cosine from 1 to 0 over the remaining steps. The cosine's progress is the larger
    of the steps done after the warm-up and `time_fraction` (the share of a time budget spent), so a run stopped by
    the clock also ends its decay."""
    if scheduler not in ("constant", "cosine"):
        raise ValueError(f"unknown learning-rate scheduler {scheduler!r}: constant or cosine")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    # the cosine runs over the steps after the warm-up (as transformers' get_cosine_schedule_with_warmup)
    progress = min(1.0, max((step - warmup_steps) / max(max_steps - warmup_steps, 1), time_fraction))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
