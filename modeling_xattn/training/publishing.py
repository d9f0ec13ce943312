"""Publishing: the model card (rendered from `model_card.md`), its `model-index`, and pushing a trained folder to the
Hub after checking that what is pushed reproduces the trained model.

    push_folder("outputs/xattn", "user/xattn-tiny")   # prints the commit and the line that loads exactly it
"""

from __future__ import annotations

import json
import shutil
import string
import tempfile
from pathlib import Path

import torch

from modeling_xattn.training.evaluation import markdown_table
from modeling_xattn.training.hub import load_pretrained, load_processor

MODEL_CARD_TEMPLATE = Path(__file__).resolve().parents[2] / "model_card.md"  # the checkout's top level
UPLOADED = ["*.safetensors", "*.json", "*.py", "*.md", "*.txt", "*.model", "*.png"]
CARD_FIELDS = ("training", "command", "metrics_table", "model_size", "parameters", "fusion_type", "modalities",
               "use_cbam", "tasks")
EXTRA_FILES = ("training_curves.png", "train_results.json", "eval_results.json", "eval_results.md")
# The Hub task type and name of each task in the card's model-index.
TASK_TYPES = {
    "classification": ("text-classification", "Image-text classification"),
    "captioning": ("image-to-text", "Image captioning"),
    "retrieval": ("image-text-retrieval", "Image-text retrieval"),
}


def model_index(model_name: str, eval_results: dict | None) -> str:
    """The `model-index` YAML block of a model card, from scripts/evaluate.py's JSON."""
    if not eval_results or not eval_results.get("results"):
        return ""
    dataset = eval_results.get("dataset", "unknown")
    lines = ["model-index:", f"- name: {model_name}", "  results:"]
    for task, metrics in eval_results["results"].items():
        task_type, task_name = TASK_TYPES.get(task, (task, task))
        lines += ["  - task:", f"      type: {task_type}", f"      name: {task_name}",
                  "    dataset:", f"      name: {dataset}", f"      type: {dataset}",
                  f"      split: {eval_results.get('split', 'validation')}", "    metrics:"]
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                metric_type = key.lower().replace("@", "_at_").replace("-", "_")
                lines += [f"    - type: {metric_type}", f"      value: {round(float(value), 4)}", f"      name: {key}"]
    return "\n".join(lines)


def render_model_card(values: dict, template: str | Path = MODEL_CARD_TEMPLATE) -> str:
    """Fill the template's `$placeholders`; unknown placeholders stay visible rather than vanish. The template is
    the source checkout's `model_card.md`; an installed copy of the package without the checkout passes its own."""
    if not Path(template).is_file():
        raise FileNotFoundError(f"model card template {template} not found: it is model_card.md of the source "
                                "checkout; pass template= (or --model_card_template) to render a card")
    return string.Template(Path(template).read_text(encoding="utf-8")).safe_substitute(values)


def metrics_table(metrics: dict) -> str:
    """The card's results table: one row per numeric metric, sorted by name."""
    rows = [{"metric": key, "value": value} for key, value in sorted(metrics.items())
            if isinstance(value, (int, float))]
    return markdown_table(rows, ["metric", "value"])


def build_card(folder: str | Path, repo_id: str, eval_results: dict | None = None,
               template: str | Path = MODEL_CARD_TEMPLATE) -> str:
    """The card of a trained folder: what training recorded (`train_results.json`'s `card`), the evaluation
    results (`eval_results.json`, as `model-index` and a table) and the repository name."""
    folder = Path(folder)
    train_results = json.loads((folder / "train_results.json").read_text()) if (folder / "train_results.json").exists() else {}
    values = dict(train_results.get("card", {}))
    values.setdefault("datasets", eval_results.get("dataset", "unknown") if eval_results else "unknown")
    values.setdefault("base_models", "  []")
    values["model_id"] = repo_id
    values["model_index"] = model_index(repo_id.split("/")[-1], eval_results)
    if eval_results:
        flat = {f"{task}/{k}": v for task, metrics in eval_results["results"].items() for k, v in metrics.items()}
        values["metrics_table"] = metrics_table(flat) + f"\n\n(split: {eval_results.get('split')})"
    elif "metrics" in train_results:
        values.setdefault("metrics_table", metrics_table(train_results["metrics"]))
    for key in CARD_FIELDS:
        values.setdefault(key, "not recorded")
    return render_model_card(values, template).replace("<repo>", repo_id)


def probe_inputs(model, processor):
    """A fixed image-text pair for the parity check."""
    generator = torch.Generator().manual_seed(0)
    size = model.config.image_size
    pixels = torch.rand(2, 3, size, size, generator=generator) * 2 - 1
    return {"pixel_values": pixels, **processor(text=["a photo of a red circle", "two dogs"])}


@torch.no_grad()
def assert_parity(original, reloaded, inputs) -> None:
    """Raise unless `reloaded` gives exactly `original`'s logits and captions."""
    if not torch.equal(original(**inputs).logits, reloaded(**inputs).logits):
        raise RuntimeError("reloaded model differs from the trained one in logits; refusing to push")
    if getattr(original, "captioner", None) is not None:
        a = original.generate(inputs["pixel_values"], max_new_tokens=5)
        b = reloaded.generate(inputs["pixel_values"], max_new_tokens=5)
        if not torch.equal(a, b):
            raise RuntimeError("reloaded model generates differently; refusing to push")


def push_folder(folder: str | Path, repo_id: str, private: bool = False, revision: str = "main",
                create_pr: bool = False, commit_message: str = "Upload XAttn model", eval_results: str | None = None,
                token: str | None = None, endpoint: str | None = None,
                template: str | Path = MODEL_CARD_TEMPLATE, include_logs: bool = False) -> dict:
    """Load `folder` (safetensors only), save a clean copy (weights, config with `auto_map`, code, processor, card),
    reload the copy and check its outputs equal the original's, then upload it. Returns the commit. The tracker's
    `runs/` (tensorboard event files, which the Hub shows as training metrics) go too only with `include_logs`;
    checkpoints never do."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    model = load_pretrained(str(folder)).eval()
    processor = load_processor(str(folder))
    eval_path = Path(eval_results) if eval_results else folder / "eval_results.json"
    results = json.loads(eval_path.read_text()) if eval_path.exists() else None
    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        for extra in EXTRA_FILES:
            if (folder / extra).exists():
                Path(staging, extra).write_bytes((folder / extra).read_bytes())
        Path(staging, "README.md").write_text(build_card(folder, repo_id, results, template), encoding="utf-8")
        patterns = list(UPLOADED)
        if include_logs and (folder / "runs").is_dir():
            shutil.copytree(folder / "runs", Path(staging, "runs"))
            patterns.append("runs/**")
        assert_parity(model, load_pretrained(staging).eval(), probe_inputs(model, processor))

        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=staging, repo_id=repo_id, revision=revision,
                                 commit_message=commit_message, create_pr=create_pr, allow_patterns=patterns)
    commit = info.oid
    print(f"pushed {repo_id} at commit {commit}" + (f" (pull request {info.pr_url})" if info.pr_url else ""))
    print(f'AutoModelForPreTraining.from_pretrained("{repo_id}", trust_remote_code=True, revision="{commit}")')
    return {"commit": commit, "repo_id": repo_id, "pr_url": info.pr_url}


__all__ = ["MODEL_CARD_TEMPLATE", "assert_parity", "build_card", "metrics_table", "model_index", "probe_inputs",
           "push_folder", "render_model_card"]
