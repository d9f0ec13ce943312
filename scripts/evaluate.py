r"""Evaluate a saved model on any dataset of the data layer, for every task its head supports.

    python scripts/evaluate.py --model outputs/xattn                         # embedded dataset, validation split
    python scripts/evaluate.py --model user/repo --revision <commit> --dataset karpathy \
        --data_file dataset_coco.json --data_dir coco/ --split test

Prints a table and writes `eval_results.json` and `eval_results.md` (which the model card and the Hub push use), and
what was predicted: `generated_captions.json` (COCO results format), `reference_captions.json` and
`retrieval_top10.json`. Tasks: classification (accuracy, macro-F1), captioning (BLEU-1..4, METEOR, ROUGE-L, CIDEr
with the COCO toolkit), retrieval (R@1/5/10 both directions, two-stage: an embedding shortlist of `--top_k` re-ranked
by the matching score; `auto` picks the largest k whose re-ranking fits `--rerank_budget` seconds on this device and
prints the estimate first). Results of another dataset or split in the output folder are never replaced silently.
"""

from modeling_xattn.training.apps.evaluate import main as run


def main(argv=None) -> dict:
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
