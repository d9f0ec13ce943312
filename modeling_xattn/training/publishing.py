"""Publishing: what a finished run records beside its weights (`write_run_records`: history, curves,
train_results.json with the card's values, `card_values`) and the summary it prints (`run_summary`); the model card
(huggingface_hub's `ModelCard`: metadata from `ModelCardData` with the `model-index` as `EvalResult`s, the text
rendered from the template that ships in the package, `templates/model_card.md`), built in one place (`build_card`);
and pushing a trained folder to the Hub after checking that what is pushed reproduces the trained model.

    push_folder("outputs/xattn", "user/xattn-tiny")   # prints the commit and the line that loads exactly it
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import sys
import tempfile
from pathlib import Path

import torch

from modeling_xattn.training.checkpoints import write_json
from modeling_xattn.training.data.sources import dataset_identity
from modeling_xattn.training.evaluation import EVALUATION_FILES
from modeling_xattn.training.hub import load_pretrained
from modeling_xattn.training.inference import load_model
from modeling_xattn.training.metrics import markdown_table
from modeling_xattn.training.options import logging_dir
from modeling_xattn.training.plots import plot_training_curves
from modeling_xattn.training.tasks import REGISTRY, pipeline_tag, usage_order
from modeling_xattn.training.towers import describe_towers, hub_base_models

# package data, so that an installed wheel writes the same card (the checkout's top-level model_card.md links to it)
MODEL_CARD_TEMPLATE = Path(__file__).resolve().parent / "templates" / "model_card.md"
TAGS = ["visual-language-fusion", "cross-attention", "cbam", "densenet", "albert", "image-captioning",
        "image-text-retrieval", "custom_code"]
UPLOADED = ["*.safetensors", "*.json", "*.py", "*.md", "*.txt", "*.model", "*.png"]
CARD_FIELDS = ("training", "command", "metrics_table", "model_size", "parameters", "fusion_type", "modalities",
               "use_cbam", "tasks", "dataset")
EXTRA_FILES = ("training_curves.png", "train_results.json", "eval_results.json", "eval_results.md")


def eval_result_list(eval_results: dict | None) -> list:
    """The card's `model-index` entries (`EvalResult`s) from scripts/evaluate.py's JSON: each numeric metric of each
    task, with the registry's Hub task type and the dataset (its Hub id where it came from the Hub)."""
    from huggingface_hub import EvalResult

    if not eval_results or not eval_results.get("results"):
        return []
    dataset_type = eval_results.get("dataset_id") or eval_results.get("dataset") or "unknown"
    dataset_name = eval_results.get("dataset_title") or dataset_type
    entries = []
    for task, metrics in eval_results["results"].items():
        known = REGISTRY.get(task)
        if known is None:
            continue
        for key, value in metrics.items():
            # the task's own metrics (and VQA's per answer type), not the run's bookkeeping (k, timings, counts)
            reported = key in known.metrics or (task == "vqa" and key.startswith("vqa_accuracy"))
            if reported and isinstance(value, (int, float)) and not isinstance(value, bool):
                entries.append(EvalResult(
                    task_type=known.hub_task, task_name=known.hub_name, dataset_type=dataset_type,
                    dataset_name=dataset_name, dataset_split=eval_results.get("split", "validation"),
                    metric_type=re.sub(r"[^a-z0-9]+", "_", key.lower().replace("@", "_at_")).strip("_"),
                    metric_name=key, metric_value=round(float(value), 4)))
    return entries


# What the card shows of each task: the lines that use the loaded model, the pipeline that serves it.
def usage_lines(tasks) -> tuple[str, str]:
    """The card's code for the trained `tasks`: using the loaded model, and the pipelines that serve it."""
    tasks = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    chosen = [REGISTRY[task] for task in usage_order() if task in tasks]
    return ("\n".join(task.usage for task in chosen) or "print(model(**processor(images=image, text=\"...\")))",
            "\n".join(task.pipeline_usage for task in chosen))


def card_metadata(card: dict, model_name: str, eval_results: dict | None = None):
    """The card's YAML metadata (`ModelCardData`): Hub ids of the pretrained towers (`base_model`) and of the data
    where it came from the Hub (`datasets`), the pipeline tag of the trained tasks, the model-index."""
    from huggingface_hub import ModelCardData

    datasets = list(card.get("hub_datasets") or [])
    if eval_results and eval_results.get("dataset_hub_id") and eval_results["dataset_hub_id"] not in datasets:
        datasets.append(eval_results["dataset_hub_id"])
    results = eval_result_list(eval_results)
    return ModelCardData(library_name="transformers", license="apache-2.0", tags=list(TAGS),
                         pipeline_tag=pipeline_tag(card.get("tasks") or "captioning"),
                         base_model=list(card.get("hub_base_models") or []) or None, datasets=datasets or None,
                         model_name=model_name if results else None, eval_results=results or None)


def render_model_card(values: dict, template: str | Path = MODEL_CARD_TEMPLATE) -> str:
    """Fill the template's `$placeholders` (the card's text, without its metadata); unknown placeholders stay
    visible rather than vanish."""
    if not Path(template).is_file():
        raise FileNotFoundError(f"model card template {template} not found (the package ships "
                                "templates/model_card.md; pass template= to render another)")
    return string.Template(Path(template).read_text(encoding="utf-8")).safe_substitute(values)


def metrics_table(metrics: dict) -> str:
    """The card's results table: one row per numeric metric, sorted by name."""
    rows = [{"metric": key, "value": value} for key, value in sorted(metrics.items())
            if isinstance(value, (int, float))]
    return markdown_table(rows, ["metric", "value"])


def build_card(folder: str | Path, repo_id: str, eval_results: dict | None = None,
               template: str | Path = MODEL_CARD_TEMPLATE) -> str:
    """The card of a trained folder, as huggingface_hub's `ModelCard` writes it: the metadata (`card_metadata`),
    then the template filled with what training recorded (`train_results.json`'s `card`), the evaluation results
    (`eval_results.json`, a table and the model-index) and the repository name. The one card builder: training's
    final folder and the push both write it."""
    from huggingface_hub import ModelCard

    folder = Path(folder)
    train_results = json.loads((folder / "train_results.json").read_text()) if (folder / "train_results.json").exists() else {}
    card = dict(train_results.get("card", {}))
    values = {key: value for key, value in card.items() if isinstance(value, str)}
    values["model_id"] = repo_id
    values["usage"], values["pipelines"] = usage_lines(card.get("tasks") or "captioning")
    if eval_results:
        flat = {f"{task}/{k}": v for task, metrics in eval_results["results"].items() for k, v in metrics.items()}
        values["metrics_table"] = (metrics_table(flat) + f"\n\n(the {eval_results.get('split')} split of "
                                   f"{eval_results.get('dataset_title') or eval_results.get('dataset')})")
    elif "metrics" in train_results:
        values["metrics_table"] = (metrics_table(train_results["metrics"])
                                   + "\n\n(the training run's last validation)")
    for key in CARD_FIELDS:
        values.setdefault(key, "not recorded")
    metadata = card_metadata(card, repo_id.split("/")[-1], eval_results)
    text = render_model_card(values, template).replace("<repo>", repo_id)
    return str(ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{text}"))


def write_run_records(args, tasks, model, state, metrics: dict, counter, seconds: float, num_processes: int,
                      graphs: int | None = None, launch: dict | None = None) -> None:
    """What a finished run writes beside its weights: `history.json`, `training_curves.png`, `train_results.json`
    (the final validation, the run's figures, the card's values: `card_values`) and the model card (`build_card`)."""
    out = args.output_dir
    scalar_metrics = {k: v for k, v in metrics.items() if k.startswith("val_")}
    results = {
        "metrics": scalar_metrics, "global_step": state.global_step, "train_seconds": round(seconds, 1),
        "best_metric": state.best_metric, "metric_for_best_model": args.metric_for_best_model,
        "num_processes": num_processes, "bad_rows": dict(counter.counts), "converted": dict(counter.converted),
        "launch": launch or {},
    }
    speeds = sorted(row["train_samples_per_s"] for row in state.history[1:] if "train_samples_per_s" in row)
    if speeds:  # the median logging interval's, the first left out (it holds the warm-up: allocation, compiling)
        results["train_samples_per_s"] = round(speeds[len(speeds) // 2], 3)
    if graphs is not None:
        results["compiled_graphs"] = graphs
    write_json(os.path.join(out, "history.json"), state.history)
    plot_training_curves(state.history, os.path.join(out, "training_curves.png"))
    results["card"] = card_values(args, tasks, model, state.global_step, num_processes, seconds, launch)
    write_json(os.path.join(out, "train_results.json"), results)
    Path(out, "README.md").write_text(build_card(out, Path(out).name), encoding="utf-8")


def card_values(args, tasks, model, steps: int, num_processes: int, seconds: float, launch: dict | None = None) -> dict:
    """What the model card says of the training run (`train_results.json`'s `card`, which `build_card` fills the
    template with): the towers and data (their Hub ids for the metadata), the model, the tasks, the recipe, the
    command that ran it."""
    identity = dataset_identity(args)
    return {
        "hub_base_models": hub_base_models(args),
        "hub_datasets": [identity["dataset_hub_id"]] if identity["dataset_hub_id"] else [],
        "dataset": identity["dataset_title"],
        "model_size": args.model_size,
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "fusion_type": model.config.fusion_type,
        "modalities": model.config.modalities,
        "use_cbam": str(model.config.use_cbam),
        "tasks": ",".join(sorted(tasks)),
        "training": (f"recipe {args.recipe}: {steps} steps, batch {args.batch_size} x "
                     f"{num_processes} process(es), {'AdamW' if args.optimizer == 'adamw' else 'Adam'} lr "
                     f"{args.learning_rate} ({args.lr_scheduler}, {args.warmup_steps} warm-up steps), "
                     f"{describe_towers(args)}, weight decay "
                     f"{args.weight_decay}{' (not on biases, norms, embeddings)' if args.decay_exclusions else ''}, "
                     + (f"lr x {args.lr_decay_beta} when the validation loss stops falling (Formula 5), "
                        if args.lr_decay_beta < 1 else "")
                     + f"{args.contrastive_loss} retrieval loss, "
                     + (f"{launch['mixed_precision']} mixed precision, "
                        if launch and launch.get("mixed_precision", "no") != "no" else "")
                     + f"seed {args.seed}, {seconds / 60:.1f} minutes"),
        "command": launch_command(num_processes) + " " + " ".join(sys.argv[1:]) if argv_is_cli()
        else "scripts/train.py main(...)",
    }


def run_summary(args, result: dict, tasks) -> str:
    """What a finished run made: where the model is, what it scored, and the commands to run next."""
    folder = args.output_dir
    metrics = {k: v for k, v in result["metrics"].items() if k.startswith("val_") and "rank" not in k}
    shown = ", ".join(f"{k[4:]} {v:.4g}" for k, v in sorted(metrics.items()))
    serving = REGISTRY[next((task for task in usage_order() if task in tasks), "captioning")]
    pipeline_task, example = serving.pipeline, serving.pipeline_input
    lines = [
        f"done: {result['global_step']} steps; the model (weights, code, processor, model card) is in {folder}",
        f"final validation: {shown or 'no metric'}",
        "next:",
        f"  python scripts/evaluate.py --model {folder}",
        f"  python -c 'from transformers import pipeline; print(pipeline(\"{pipeline_task}\", model=\"{folder}\", "
        f"trust_remote_code=True)({example}))'",
        f"  python scripts/demo.py --model {folder}",
    ]
    if args.report_to == "tensorboard":
        lines.append(f"  tensorboard --logdir {logging_dir(args)}")
    if result.get("pushed"):
        lines.insert(1, f"pushed: {result['pushed']['repo_id']} at {result['pushed']['commit']}")
    return "\n".join(lines)


def set_aside_evaluation(folder: str, accelerator) -> None:
    """An evaluation found in the folder describes the weights about to be replaced (a resumed or restarted run):
    move it to `earlier_evaluation/`, so that neither the folder nor a push presents it as the new model's."""
    found = [name for name in EVALUATION_FILES if os.path.exists(os.path.join(folder, name))]
    if not found:
        return
    earlier = os.path.join(folder, "earlier_evaluation")
    shutil.rmtree(earlier, ignore_errors=True)
    os.makedirs(earlier)
    for name in found:
        os.replace(os.path.join(folder, name), os.path.join(earlier, name))
    accelerator.print(f"moved the evaluation of the earlier weights ({', '.join(found)}) to {earlier}; evaluate the "
                      "new model with scripts/evaluate.py")


def launch_command(num_processes: int) -> str:
    """How this run was started, as a command to run again: `python scripts/train.py`, or torchrun's equivalent for
    `num_processes` processes (Accelerate's and torchrun's launchers both set the sizes read here)."""
    if num_processes == 1:
        return "python scripts/train.py"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    nodes = num_processes // max(per_node, 1)
    return f"torchrun{f' --nnodes {nodes}' if nodes > 1 else ''} --nproc_per_node {per_node} scripts/train.py"


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name == "train.py"


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
    model, processor = load_model(str(folder), device="cpu")
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
        # the copy's weights alone, read back as anyone will read them (the processor was just saved from ours)
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


__all__ = ["MODEL_CARD_TEMPLATE", "assert_parity", "build_card", "card_metadata", "card_values", "eval_result_list",
           "launch_command", "metrics_table", "probe_inputs", "push_folder", "render_model_card", "run_summary",
           "set_aside_evaluation", "write_run_records"]
