"""Push a trained folder to the Hugging Face Hub with its custom code, processor and a real model card.

    python scripts/push_to_hub.py --folder outputs/xattn --repo_id user/xattn-tiny
    python scripts/push_to_hub.py --folder outputs/xattn --repo_id user/xattn-tiny --revision dev --create_pr

It loads the folder (safetensors only), saves a clean copy (weights, config with `auto_map`, code files, processor),
reloads that copy and checks its outputs equal the original's before anything is pushed. The model card is rendered
from model_card.md with YAML metadata and `model-index` results from scripts/evaluate.py's `eval_results.json`.
Prints the commit hash and the line that loads exactly that revision.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

import modeling_xattn  # noqa: F401  (registers the classes)
from modeling_xattn.hub_xattn import load_pretrained, load_processor, model_index
from modeling_xattn.training_xattn import render_model_card

TEMPLATE = Path(__file__).resolve().parents[1] / "model_card.md"
UPLOADED = ["*.safetensors", "*.json", "*.py", "*.md", "*.txt", "*.model", "*.png"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", required=True, help="a folder written by scripts/train.py")
    p.add_argument("--repo_id", required=True, help="user/name on the Hub")
    p.add_argument("--private", action="store_true")
    p.add_argument("--revision", default="main", help="branch to push to (created from main if missing)")
    p.add_argument("--create_pr", action="store_true", help="open a pull request instead of committing to the branch")
    p.add_argument("--commit_message", default="Upload XAttn model")
    p.add_argument("--eval_results", help="scripts/evaluate.py JSON (default: <folder>/eval_results.json)")
    p.add_argument("--token", help="Hub token (default: the logged-in one)")
    p.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT"), help="Hub endpoint (default: HF_ENDPOINT)")
    return p.parse_args(argv)


def probe_inputs(model, processor):
    """A fixed image-text pair for the parity check."""
    generator = torch.Generator().manual_seed(0)
    size = model.config.image_size
    pixels = torch.rand(2, 3, size, size, generator=generator) * 2 - 1
    text = processor(text=["a photo of a red circle", "two dogs"])
    return {"pixel_values": pixels, **text}


@torch.no_grad()
def assert_parity(original, reloaded, inputs):
    first, second = original(**inputs), reloaded(**inputs)
    for key in ("logits",):
        if not torch.equal(getattr(first, key), getattr(second, key)):
            raise RuntimeError(f"reloaded model differs from the trained one in {key}; refusing to push")
    if getattr(original, "captioner", None) is not None:
        a = original.generate(inputs["pixel_values"], max_new_tokens=5)
        b = reloaded.generate(inputs["pixel_values"], max_new_tokens=5)
        if not torch.equal(a, b):
            raise RuntimeError("reloaded model generates differently; refusing to push")


def build_card(folder: Path, repo_id: str, eval_results: dict | None) -> str:
    train_results = json.loads((folder / "train_results.json").read_text()) if (folder / "train_results.json").exists() else {}
    values = dict(train_results.get("card", {}))
    values.setdefault("datasets", eval_results.get("dataset", "unknown") if eval_results else "unknown")
    values.setdefault("base_models", "  []")
    values["model_id"] = repo_id
    values["model_index"] = model_index(repo_id.split("/")[-1], eval_results)
    if eval_results:
        from modeling_xattn.training_xattn import metrics_markdown

        flat = {f"{task}/{k}": v for task, metrics in eval_results["results"].items() for k, v in metrics.items()
                if isinstance(v, (int, float))}
        values["metrics_table"] = metrics_markdown(flat) + f"\n\n(split: {eval_results.get('split')})"
    for key in ("training", "command", "metrics_table", "model_size", "parameters", "fusion_type", "modalities",
                "use_cbam", "tasks"):
        values.setdefault(key, "not recorded")
    return render_model_card(str(TEMPLATE), values).replace("<repo>", repo_id)


def main(argv=None):
    args = parse_args(argv)
    from huggingface_hub import HfApi

    folder = Path(args.folder)
    model = load_pretrained(str(folder)).eval()
    processor = load_processor(str(folder))
    eval_path = Path(args.eval_results) if args.eval_results else folder / "eval_results.json"
    eval_results = json.loads(eval_path.read_text()) if eval_path.exists() else None

    with tempfile.TemporaryDirectory() as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        for extra in ("training_curves.png", "train_results.json", "eval_results.json", "eval_results.md"):
            if (folder / extra).exists():
                Path(staging, extra).write_bytes((folder / extra).read_bytes())
        Path(staging, "README.md").write_text(build_card(folder, args.repo_id, eval_results), encoding="utf-8")
        reloaded = load_pretrained(staging).eval()
        assert_parity(model, reloaded, probe_inputs(model, processor))

        api = HfApi(endpoint=args.endpoint, token=args.token)
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        if args.revision != "main":
            api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        info = api.upload_folder(folder_path=staging, repo_id=args.repo_id, revision=args.revision,
                                 commit_message=args.commit_message, create_pr=args.create_pr,
                                 allow_patterns=UPLOADED)
    commit = info.oid
    print(f"pushed {args.repo_id} at commit {commit}" + (f" (pull request {info.pr_url})" if info.pr_url else ""))
    print(f'AutoModelForPreTraining.from_pretrained("{args.repo_id}", trust_remote_code=True, revision="{commit}")')
    return {"commit": commit, "repo_id": args.repo_id, "pr_url": info.pr_url}


if __name__ == "__main__":
    main()
