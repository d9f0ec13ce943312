"""Training helpers: optimiser groups, evaluation, atomic checkpoints, training curves and the model card."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .metrics_xattn import recall_at_k

BACKBONE_PREFIXES = ("xattn.text_model.", "xattn.vision_model.features.")


@dataclass
class TrainingState:
    """What the loop needs to resume besides weights, optimiser, scheduler and RNG (saved by `save_state`)."""

    global_step: int = 0
    best_metric: float | None = None
    history: list = field(default_factory=list)

    def state_dict(self):
        return asdict(self)

    def load_state_dict(self, state):
        self.global_step = state["global_step"]
        self.best_metric = state["best_metric"]
        self.history = list(state["history"])


def parameter_groups(model, learning_rate, backbone_learning_rate=None, weight_decay=1e-4, freeze_text=False,
                     freeze_vision=False):
    """Adam groups: pretrained towers (ALBERT, DenseNet features) may get their own learning rate or be frozen."""
    backbone, rest = [], []
    for name, param in model.named_parameters():
        is_text = name.startswith(BACKBONE_PREFIXES[0])
        is_vision = name.startswith(BACKBONE_PREFIXES[1])
        if (is_text and freeze_text) or (is_vision and freeze_vision):
            param.requires_grad_(False)
            continue
        (backbone if is_text or is_vision else rest).append(param)
    groups = [{"params": rest, "lr": learning_rate, "weight_decay": weight_decay}]
    if backbone:
        groups.append({"params": backbone, "lr": backbone_learning_rate or learning_rate, "weight_decay": weight_decay})
    return groups


@torch.no_grad()
def evaluate_multitask(model, dataloader, accelerator, max_batches=None) -> dict:
    """Validation losses per task (Formula 4 and its parts), 3-way or VQA accuracy, and image->text retrieval over the whole
    validation set from the unimodal embeddings (exhaustive; one caption per image)."""
    model.eval()
    sums, count, correct, labelled, vqa_sum, vqa_count = {}, 0, 0, 0, 0.0, 0
    image_embeds, text_embeds, ids = [], [], []
    unwrapped = accelerator.unwrap_model(model)
    for step, batch in enumerate(dataloader):
        if max_batches is not None and step >= max_batches:
            break
        if not batch:
            continue
        image_ids = batch.pop("image_ids")
        batch.pop("row_index", None)
        with accelerator.autocast():
            out = model(**batch, image_ids=image_ids)
        size = len(batch["pixel_values"])
        for key in ("loss", "loss_ce", "loss_cl", "loss_seq"):
            value = getattr(out, key)
            if value is not None:
                total = accelerator.gather_for_metrics(value.detach().float().reshape(1) * size).sum()
                sums[key] = sums.get(key, 0.0) + float(total)
        count += int(accelerator.gather_for_metrics(torch.tensor([size], device=accelerator.device)).sum())
        if out.logits is not None and "labels" in batch and batch["labels"].dim() == 2:  # VQA soft scores
            scores = batch["labels"].gather(1, out.logits.argmax(-1, keepdim=True)).squeeze(1)
            vqa_sum += float(accelerator.gather_for_metrics(scores).sum())
            vqa_count += int(accelerator.gather_for_metrics(torch.tensor([len(scores)], device=accelerator.device)).sum())
        if out.logits is not None and "labels" in batch and batch["labels"].dim() == 1:
            predictions, labels = accelerator.gather_for_metrics((out.logits.argmax(-1), batch["labels"]))
            mask = labels != -100
            correct += int((predictions[mask] == labels[mask]).sum())
            labelled += int(mask.sum())
        if out.image_embeds is not None:  # the forward pass's own retrieval embeddings: nothing is encoded twice
            gathered = accelerator.gather_for_metrics((out.image_embeds, out.text_embeds, image_ids))
            image_embeds.append(gathered[0].float())
            text_embeds.append(gathered[1].float())
            ids.append(gathered[2])
    metrics = {f"val_{key}": value / max(count, 1) for key, value in sums.items()}
    if labelled:
        metrics["val_accuracy"] = 100.0 * correct / labelled
    if vqa_count:
        metrics["val_vqa_accuracy"] = 100.0 * vqa_sum / vqa_count  # min(#annotators / 3, 1) of the top answer
    if image_embeds:
        images, texts, all_ids = torch.cat(image_embeds), torch.cat(text_embeds), torch.cat(ids)
        similarity = -unwrapped.retrieval.distance(images, texts)
        positives = all_ids[:, None] == all_ids[None, :]
        metrics.update({f"val_i2t_{k}": v for k, v in recall_at_k(similarity, positives).items()})
    model.train()
    return metrics


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


def latest_checkpoint(checkpoints_dir: str) -> str | None:
    checkpoints = list_checkpoints(checkpoints_dir)
    return checkpoints[-1] if checkpoints else None


# --------------------------------------------------------------------------------------------- reporting


def plot_training_curves(history: list[dict], path: str) -> None:
    """A PNG of every loss and metric in `history` against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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


def render_model_card(template_path: str, values: dict) -> str:
    """Fill `model_card.md`'s `$placeholders`; unknown placeholders stay visible rather than vanish."""
    return string.Template(Path(template_path).read_text(encoding="utf-8")).safe_substitute(values)


def metrics_markdown(metrics: dict) -> str:
    rows = [f"| {key} | {value:.4g} |" for key, value in sorted(metrics.items()) if isinstance(value, (int, float))]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def write_json(path: str, data) -> None:
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
