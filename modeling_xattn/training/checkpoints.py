"""Checkpoints: the loop's resumable state, atomic saves and finding the newest complete one; the notice about
tied weights that saving prints."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path


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


CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


def save_checkpoint_atomically(accelerator, checkpoints_dir: str, step: int, keep: int | None = None,
                               save_more=None) -> str:
    """`accelerator.save_state` (and `save_more(folder)` where given, on every process) into a temporary folder,
    then one atomic rename to `step_<N>`: a kill during the save leaves a `tmp-` folder that `latest_checkpoint`
    ignores, never a damaged `step_<N>`."""
    final = os.path.join(checkpoints_dir, f"step_{step}")
    temporary = os.path.join(checkpoints_dir, f"tmp-step_{step}")
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(temporary)
    if save_more is not None:
        save_more(temporary)
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


def latest_checkpoint(checkpoints_dir: str) -> str | None:
    checkpoints = list_checkpoints(checkpoints_dir)
    return checkpoints[-1] if checkpoints else None


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


def write_json(path: str, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
