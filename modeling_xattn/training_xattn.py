"""Training helpers: optimiser groups, evaluation, atomic checkpoints, training curves and the model card."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .data_xattn import BadRowCounter, _missing_target_reason, row_targets

BACKBONE_PREFIXES = ("xattn.text_model.", "xattn.vision_model.features.")


@dataclass
class TrainingState:
    """What the loop needs to resume besides weights, optimiser, scheduler and RNG (saved by `save_state`)."""

    global_step: int = 0
    best_metric: float | None = None
    history: list = field(default_factory=list)
    train_seconds: float = 0.0  # wall time of the run before its last checkpoint: a time budget spans resumes

    def state_dict(self):
        return asdict(self)

    def load_state_dict(self, state):
        self.global_step = state["global_step"]
        self.best_metric = state["best_metric"]
        self.history = list(state["history"])
        self.train_seconds = float(state.get("train_seconds", 0.0))


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


class _TiedWeightsNotice(logging.Filter):
    """Drops accelerate's "Removed shared tensor {...} while saving" notice when the removed tensors are exactly the
    model's tied weights (the caption decoder's output layer is its input embedding): that is expected, and loading
    ties them again. Any other shared tensor is still reported."""

    def __init__(self, tied: set[str]):
        super().__init__()
        self.tied = tied

    def filter(self, record):
        message = record.getMessage()
        if "Removed shared tensor" not in message:
            return True
        names = set(re.findall(r"'([^']+)'", message))
        return not names or not names <= self.tied


def quiet_tied_weights_notice(model) -> None:
    """Install `_TiedWeightsNotice` for `model` on accelerate's logger."""
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNotice(tied))


def generation_overrides(num_beams: int | None = None, max_new_tokens: int | None = None) -> dict:
    """The generation arguments a command line set; the others come from the model's `generation_config`."""
    return {k: v for k, v in dict(num_beams=num_beams, max_new_tokens=max_new_tokens).items() if v is not None}


def decay_excluded(model) -> set[str]:
    """Names of the parameters that take no weight decay, as CLIP and BLIP train: biases, norm scales and the other
    vectors and scalars (gates, the logit scale and bias), embedding tables, and attention-pooling queries."""
    embeddings = {f"{module_name}.{name}".lstrip(".") for module_name, module in model.named_modules()
                  if isinstance(module, torch.nn.Embedding) for name, _ in module.named_parameters(recurse=False)}
    return {name for name, param in model.named_parameters()
            if param.ndim < 2 or name in embeddings or name.endswith(".probe")}


def parameter_groups(model, learning_rate, backbone_learning_rate=None, weight_decay=1e-4, freeze_text=False,
                     freeze_vision=False, decay_exclusions=False):
    """Optimiser groups: pretrained towers (ALBERT, DenseNet features) may get their own learning rate or be frozen;
    with `decay_exclusions`, the parameters `decay_excluded` names get weight decay 0."""
    excluded = decay_excluded(model) if decay_exclusions else set()
    buckets = {}
    for name, param in model.named_parameters():
        is_text = name.startswith(BACKBONE_PREFIXES[0])
        is_vision = name.startswith(BACKBONE_PREFIXES[1])
        if (is_text and freeze_text) or (is_vision and freeze_vision):
            param.requires_grad_(False)
            continue
        buckets.setdefault((is_text or is_vision, name in excluded), []).append(param)
    groups = []
    for (backbone, no_decay), params in sorted(buckets.items()):
        lr = (backbone_learning_rate or learning_rate) if backbone else learning_rate
        groups.append({"params": params, "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay})
    return groups


# --------------------------------------------------------------------------------------------- checkpoints

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


def save_checkpoint_atomically(accelerator, checkpoints_dir: str, step: int, keep: int | None = None) -> str:
    """`accelerator.save_state` into a temporary folder, then one atomic rename to `step_<N>`: a kill during the save
    leaves a `tmp-` folder that `latest_checkpoint` ignores, never a damaged `step_<N>`."""
    final = os.path.join(checkpoints_dir, f"step_{step}")
    temporary = os.path.join(checkpoints_dir, f"tmp-step_{step}")
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(temporary, final)
        if keep:
            for old in list_checkpoints(checkpoints_dir)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(checkpoints_dir: str) -> list[str]:
    """Complete checkpoints, oldest first (temporary folders of interrupted saves are not listed)."""
    if not os.path.isdir(checkpoints_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(checkpoints_dir) if (m := CHECKPOINT_PATTERN.match(name))]
    return [os.path.join(checkpoints_dir, name) for _, name in sorted(found)]


def any_process(accelerator, flag: bool) -> bool:
    """True when `flag` is true on this process or on any other (a collective: every process must call it)."""
    if accelerator is None or accelerator.num_processes == 1:
        return bool(flag)
    value = torch.tensor([float(flag)], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def latest_checkpoint(checkpoints_dir: str) -> str | None:
    checkpoints = list_checkpoints(checkpoints_dir)
    return checkpoints[-1] if checkpoints else None


# --------------------------------------------------------------------------------------------- reporting


def pyplot():
    """matplotlib's pyplot on the Agg backend: figures go to files, no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: list[dict], path: str) -> None:
    """A PNG of every loss and metric in `history` against the step."""
    plt = pyplot()

    keys = sorted({k for row in history for k in row if k != "step" and isinstance(row[k], (int, float))})
    losses = [k for k in keys if "loss" in k]
    metrics = [k for k in keys if "loss" not in k and k != "lr"]
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, group, title in ((axes[0], losses, "losses"), (axes[1], metrics, "validation metrics"), (axes[2], ["lr"], "learning rate")):
        for key in group:
            points = [(row["step"], row[key]) for row in history if key in row and math.isfinite(row[key])]
            if points:
                ax.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        if group:
            ax.legend(fontsize=7)
    axes[2].set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_json(path: str, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


# --------------------------------------------------------------------------------------------- what a run trains on

TASKS = ("classification", "retrieval", "captioning", "vqa")
# Which target each task needs (see `data_xattn.row_targets`).
TASK_NEEDS = {"classification": "statement", "retrieval": "caption", "captioning": "caption", "vqa": "question"}


def collator_task(tasks: set[str]) -> str:
    """The `XAttnCollator` task that serves a set of training tasks."""
    if tasks == {"classification"}:
        return "classification"
    if "vqa" in tasks:
        return "vqa" if tasks == {"vqa"} else "vqa+captions"
    if "classification" in tasks:
        return "multitask"
    return "captioning"  # retrieval and/or captioning: a caption per row


def _text_rows(dataset) -> list[dict]:
    """Every row's text columns (no image is decoded)."""
    wanted = [c for c in ("text", "question", "label", "captions", "image_id") if c in dataset.column_names]
    columns = {name: list(dataset[name]) for name in wanted}
    return [{name: columns[name][i] for name in wanted} for i in range(len(dataset))]


def _target_rows(dataset, task: str) -> list[set[str]]:
    """Each row's targets for a collator task."""
    return [row_targets(row, task) for row in _text_rows(dataset)]


def select_tasks(requested: str, dataset) -> set[str]:
    """The tasks to train: `requested` (comma-separated) or, for "auto", every task whose targets the data has
    (classification where rows carry a text and a label, retrieval and captioning where they carry captions).

    Raises a `ValueError` naming the task when a requested task's targets are in no row of `dataset`."""
    probe = _target_rows(dataset, "vqa+captions") if "vqa" in requested else _target_rows(dataset, "multitask")
    have = Counter(target for targets in probe for target in targets)
    if requested == "auto":
        tasks = {task for task in ("classification", "retrieval", "captioning") if have[TASK_NEEDS[task]]}
        if not tasks:
            raise ValueError(f"no row of the {len(dataset)} training rows has a caption or a labelled text: nothing "
                             "to train (check --caption_column, --text_column and --label_column)")
        return tasks
    tasks = {task.strip() for task in requested.split(",") if task.strip()}
    unknown = tasks - set(TASKS)
    if unknown or not tasks or {"classification", "vqa"} <= tasks:
        raise ValueError(f"--tasks {requested}: choose from {', '.join(TASKS)} (or auto); classification and vqa "
                         f"share one classifier, so not both; unknown: {sorted(unknown)}")
    missing = [task for task in sorted(tasks) if not have[TASK_NEEDS[task]]]
    if missing:
        found = ", ".join(f"{have[name]} with a {name}" for name in ("statement", "question", "caption"))
        raise ValueError(f"--tasks {requested}: no training row has a target for {', '.join(missing)} "
                         f"(of {len(dataset)} rows: {found}; a statement is a text with a label). Drop the task "
                         "from --tasks or point --caption_column / --text_column / --label_column at the data")
    return tasks


def usable_rows(dataset, task: str, counter: BadRowCounter):
    """The rows of `dataset` that carry at least one target of the collator `task`; the others are counted in
    `counter` by reason and dropped before training, so epochs have a known length."""
    keep = []
    for index, row in enumerate(_text_rows(dataset)):
        if row_targets(row, task):
            keep.append(index)
        else:
            counter.add(f"no target for the task ({_missing_target_reason(row, task)})", str(row.get("image_id", index)))
    return dataset if len(keep) == len(dataset) else dataset.select(keep)


def plot_caption_samples(images, predictions: list[str], references: list[list[str]], path: str, columns: int = 3):
    """A PNG grid: each photo above its generated caption and its reference captions."""
    import textwrap

    plt = pyplot()

    from .data_xattn import load_image

    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(2 * rows, columns, figsize=(4.6 * columns, 7.0 * rows), squeeze=False,
                                gridspec_kw={"height_ratios": [3, 2] * rows})
    for ax in axes.flat:
        ax.axis("off")
    for index, (image, predicted, refs) in enumerate(zip(images, predictions, references)):
        row, column = divmod(index, columns)
        axes[2 * row, column].imshow(load_image(image).convert("RGB"))
        lines = textwrap.wrap(f"generated: {predicted}", 52) + ["references:"]
        for reference in refs[:5]:
            lines += textwrap.wrap(f"- {reference}", 52)
        axes[2 * row + 1, column].text(0, 1, "\n".join(lines), va="top", ha="left", fontsize=8,
                                       transform=axes[2 * row + 1, column].transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
