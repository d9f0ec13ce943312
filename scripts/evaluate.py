"""Evaluate a saved model on any dataset of the data layer, for every task its head supports.

    python scripts/evaluate.py --model outputs/xattn                         # embedded dataset, validation split
    python scripts/evaluate.py --model user/repo --revision <commit> --dataset karpathy \
        --data_file dataset_coco.json --data_dir coco/ --split test

Prints a table and writes `eval_results.json` and `eval_results.md` (which the model card and the Hub push use).
Tasks: classification (accuracy, macro-F1), captioning (BLEU-1..4, METEOR, ROUGE-L, CIDEr with the COCO toolkit),
retrieval (R@1/5/10 both directions, two-stage: embedding shortlist of `--top_k` re-ranked by the matching score).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from modeling_xattn.training.data.schema import BadRowCounter
from modeling_xattn.training.data.sources import load_split, undecoded
from modeling_xattn.training.evaluation import (
    TASKS,
    caption_samples,
    evaluate_model,
    load_model,
    markdown_table,
    shortlist_sizes,
)
from modeling_xattn.training.options import DataArguments, parser_for
from modeling_xattn.training.tasks import usable_rows


def parse_args(argv=None):
    p = parser_for((DataArguments,), __doc__)  # the data options, typed; this command's own below
    p.add_argument("--model", required=True, help="a saved folder or a Hub id")
    p.add_argument("--revision", help="Hub revision (pin a commit)")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_beams", type=int, help="default: the model's generation_config.json")
    p.add_argument("--max_new_tokens", type=int, help="default: the model's generation_config.json")
    p.add_argument("--top_k", type=shortlist_sizes, default=128,
                   help="retrieval shortlist size re-ranked by the matching score (0: rank by the embeddings alone), "
                        "or one per direction: i2t=64,t2i=16 (scripts/benchmark.py measures R@1 against k)")
    p.add_argument("--caption_samples", type=int, default=0,
                   help="write caption_samples.png with this many photos and their generated and reference captions")
    p.add_argument("--exhaustive", action="store_true", help="score every image-text pair by cross-attention")
    p.add_argument("--no_java", action="store_true", help="caption metrics without Java (no METEOR)")
    p.add_argument("--output_dir", help="where to write eval_results.{json,md} (default: the model folder if local)")
    p.add_argument("--no_progress", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model, processor = load_model(args.model, args.revision)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    counter = BadRowCounter()
    try:
        dataset = undecoded(load_split(args, args.split, counter))
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    tasks = [t for t in args.tasks.split(",") if t]
    output_dir = args.output_dir or (args.model if os.path.isdir(args.model) else "eval_output")
    results = evaluate_model(model, processor, dataset, tasks, args.batch_size, args.num_beams, args.max_new_tokens,
                             args.top_k, args.exhaustive, java=not args.no_java, progress=not args.no_progress,
                             counter=counter)
    if not results:  # nothing to report: leave any earlier eval_results.json as it was
        labelled = len(usable_rows(dataset, "classification", BadRowCounter()))
        captioned = len(usable_rows(dataset, "captioning", BadRowCounter()))
        raise SystemExit(f"nothing evaluated: the {args.split} split ({len(dataset)} rows: {labelled} with a "
                         f"label, {captioned} with captions) gave no result for --tasks {args.tasks} and this "
                         f"model. {counter.summary()}")
    os.makedirs(output_dir, exist_ok=True)
    if args.caption_samples and "captioning" in results:
        captioned = usable_rows(dataset, "captioning", BadRowCounter())
        caption_samples(model, processor, captioned, args.caption_samples, Path(output_dir) / "caption_samples.png",
                        args.num_beams, args.max_new_tokens)
    payload = {"model": args.model, "revision": args.revision, "dataset": args.dataset_name or args.dataset,
               "data": args.dataset_name or args.data_dir or args.data_file, "split": args.split, "results": results,
               "bad_rows": dict(counter.counts), "converted": dict(counter.converted)}
    Path(output_dir, "eval_results.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    table = markdown_table(results)
    Path(output_dir, "eval_results.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(counter.summary())
    return payload


if __name__ == "__main__":
    main()
