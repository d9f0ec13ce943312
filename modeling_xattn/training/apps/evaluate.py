"""Evaluation of a saved model on any data source behind `scripts/evaluate.py` (its docstring has the commands): every
task the model's heads support, on the rows that carry its target; the results table, `eval_results.json` and
`eval_results.md`, and beside them what was predicted (`generated_captions.json`, a COCO results file;
`reference_captions.json`; `retrieval_top10.json`)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from modeling_xattn.training.data.schema import BadRowCounter, undecoded
from modeling_xattn.training.data.sources import dataset_identity, load_split
from modeling_xattn.training.evaluation import CAPTIONS_PER_IMAGE, caption_samples, evaluate_model, write_predictions
from modeling_xattn.training.inference import RERANK_BUDGET_SECONDS, load_model, shortlist_sizes
from modeling_xattn.training.metrics import markdown_table
from modeling_xattn.training.options import DataArguments, option, parse_merged
from modeling_xattn.training.tasks import evaluated_tasks, usable_rows


@dataclass(kw_only=True)  # required options first is no constraint on the merged options
class EvaluateArguments:
    """What to evaluate and how."""

    _argument_group_name = "evaluation"

    model: str = field(metadata={"help": "a saved folder or a Hub id"})
    revision: str | None = option(None, "Hub revision (pin a commit)")
    split: Literal["train", "validation", "test"] = option("validation")
    tasks: str = option(",".join(evaluated_tasks()))
    batch_size: int = option(32)
    num_beams: int | None = option(None, "default: the model's generation_config.json")
    max_new_tokens: int | None = option(None, "default: the model's generation_config.json")
    top_k: str = option(
        "auto",
        "retrieval shortlist size re-ranked by the matching score: auto (the largest of 128, 64, ..., 1 whose "
        "re-ranking fits --rerank_budget at the pairs/s measured on this device), a number (0: rank by the "
        "embeddings alone), or one per direction: i2t=64,t2i=16 (scripts/benchmark.py measures R@1 against k)")
    rerank_budget: float = option(RERANK_BUDGET_SECONDS, "seconds --top_k auto may spend re-ranking, both directions")
    rerank_score: Literal["itm", "itm+similarity"] = option(
        "itm+similarity", "how a shortlisted pair is scored: itm+similarity (the matching head's log-probability plus "
        "the embeddings' cosine, as BLIP re-ranks; at least as good as itm alone in 16 of 18 recall figures on Flickr8k, docs/flickr8k.md) "
        "or itm (the log-probability alone)")
    caption_samples: int = option(
        0, "write caption_samples.png with this many photos and their generated and reference captions")
    exhaustive: bool = option(False, "score every image-text pair by cross-attention")
    captions_per_image: int = option(
        CAPTIONS_PER_IMAGE,
        "retrieval: the first N captions of each image form the gallery (5: the COCO 5k and Flickr30k 1k test "
        "protocols; 0: all)")
    no_java: bool = option(False, "caption metrics without Java (no METEOR)")
    output_dir: str | None = option(
        None, "where to write eval_results.{json,md} and the predictions (default: the model folder if local)")
    overwrite_output_dir: bool = option(
        False, "write over an eval_results.json there that another model, dataset or split gave")
    no_progress: bool = option(False)
    device: str | None = option(None, "cuda, cuda:N, mps or cpu (default: CUDA where available, else MPS, else CPU)")


@dataclass
class EvaluateOptions(EvaluateArguments, DataArguments):
    """Every option of an evaluation: its own and the data's."""


def parse_args(argv=None, description: str | None = None) -> EvaluateOptions:
    return parse_merged(EvaluateOptions, (EvaluateArguments, DataArguments), argv, description or __doc__)


def main(argv=None, description: str | None = None) -> dict:
    """Evaluate as the command line says; returns what `eval_results.json` holds."""
    args = parse_args(argv, description)
    try:
        top_k = shortlist_sizes(args.top_k)
    except argparse.ArgumentTypeError as error:
        raise SystemExit(f"--top_k {args.top_k}: {error}") from None
    output_dir = args.output_dir or (args.model if os.path.isdir(args.model) else "eval_output")
    source = {"model": args.model, "revision": args.revision, "dataset": args.dataset_name or args.dataset,
              "data": args.dataset_name or args.data_dir or args.data_file, "split": args.split}
    identity = dataset_identity(args)
    refuse_other_results(output_dir, source, args.overwrite_output_dir)
    model, processor = load_model(args.model, args.revision, args.device)
    counter = BadRowCounter()
    try:
        dataset = undecoded(load_split(args, args.split, counter))
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    tasks = [t for t in args.tasks.split(",") if t]
    outputs = {}
    results = evaluate_model(model, processor, dataset, tasks, args.batch_size, args.num_beams, args.max_new_tokens,
                             top_k, args.exhaustive, java=not args.no_java, progress=not args.no_progress,
                             counter=counter, rerank_budget=args.rerank_budget, outputs=outputs,
                             captions_per_image=args.captions_per_image, rerank_score=args.rerank_score)
    if not results:  # nothing to report: leave any earlier eval_results.json as it was
        labelled = len(usable_rows(dataset, "statement", BadRowCounter()))
        captioned = len(usable_rows(dataset, "caption", BadRowCounter()))
        questions = len(usable_rows(dataset, "question", BadRowCounter()))
        raise SystemExit(f"nothing evaluated: the {args.split} split ({len(dataset)} rows: {labelled} with a "
                         f"label, {captioned} with captions, {questions} with a question) gave no result for --tasks "
                         f"{args.tasks} and this model"
                         + (" (VQA needs a model trained with --tasks vqa)" if "vqa" in args.tasks and questions else "")
                         + f". {counter.summary()}")
    os.makedirs(output_dir, exist_ok=True)
    if args.caption_samples and "captioning" in results:
        captioned = usable_rows(dataset, "caption", BadRowCounter())
        caption_samples(model, processor, captioned, args.caption_samples, Path(output_dir) / "caption_samples.png",
                        args.num_beams, args.max_new_tokens)
    payload = {**source, **identity, "results": results,
               "bad_rows": dict(counter.counts), "converted": dict(counter.converted)}
    Path(output_dir, "eval_results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    table = markdown_table(results)
    Path(output_dir, "eval_results.md").write_text(table + "\n", encoding="utf-8")
    written = write_predictions(outputs, output_dir)
    print(table)
    print(counter.summary())
    print(f"results: {Path(output_dir, 'eval_results.json')}" + "".join(f"\npredictions: {p}" for p in written))
    return payload


def comparable(key: str, value):
    """A source field as two evaluations compare it: a local model folder by its absolute path."""
    if key == "model" and isinstance(value, str) and os.path.isdir(value):
        return os.path.abspath(value)
    return value


def refuse_other_results(output_dir: str, source: dict, overwrite: bool) -> None:
    """Stop before evaluating when `output_dir` holds the results of another model, revision, dataset or split (the
    same evaluation is simply brought up to date): one evaluation's results never silently replace another's."""
    path = Path(output_dir, "eval_results.json")
    if overwrite or not path.exists():
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = {}
    if all(comparable(key, earlier.get(key)) == comparable(key, value) for key, value in source.items()):
        return
    described = ", ".join(f"{key} {earlier.get(key)!r}" for key in source)
    raise SystemExit(f"{path} holds the results of another evaluation ({described}); give this one its own "
                     f"--output_dir, or --overwrite_output_dir to replace them")
