"""The caption metrics as an `evaluate` module that loads offline from a local path:

    import evaluate
    from modeling_xattn.training import caption_metric
    metric = evaluate.load(caption_metric.__file__)
    metric.compute(predictions=["a dog"], references=[["a dog runs", "a brown dog"]])

(`evaluate.load("bleu")` and friends need the Hub; this one computes BLEU-1..4, METEOR, ROUGE-L and CIDEr with the
COCO caption toolkit, exactly as `modeling_xattn.training.metrics.caption_metrics` does.)
"""

import datasets
import evaluate

from modeling_xattn.training.metrics import caption_metrics

_DESCRIPTION = "COCO caption evaluation toolkit metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D (toolkit scale)."
_KWARGS = """
Args:
    predictions: list of generated captions.
    references: list of lists of reference captions, one list per prediction.
    tokenize: use the toolkit's PTB tokenizer (needs Java; default True).
Returns: a dict with BLEU-1, BLEU-2, BLEU-3, BLEU-4, METEOR, ROUGE-L, CIDEr.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class CaptionMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Chen et al., Microsoft COCO Captions: Data Collection and Evaluation Server, 2015",
            inputs_description=_KWARGS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references, tokenize=True):
        return caption_metrics(list(predictions), [list(r) for r in references], tokenize=tokenize)
