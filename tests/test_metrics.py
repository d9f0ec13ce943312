import shutil

import pytest
import torch

from conftest import slow
from modeling_xattn.training.metrics import (
    caption_metrics,
    classification_metrics,
    recall_at_k,
    retrieval_metrics,
    vqa_accuracy,
)

PREDICTIONS = ["a man riding a horse on a beach", "two dogs playing in the park", "a plate of food on a table"]
REFERENCES = [
    ["A man rides a horse along the beach.", "a person riding a horse on the sand", "man on horseback at the shore"],
    ["Two dogs play with a ball in a park.", "two puppies playing on the grass", "dogs running in a park"],
    ["A plate with food on a wooden table.", "a dish of pasta on the table", "food served on a white plate"],
]

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the COCO toolkit needs Java")


@slow
@needs_java
def test_caption_metrics_equal_the_toolkits_own_scorers():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ours = caption_metrics(PREDICTIONS, REFERENCES)
    assert list(ours) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "distinct_captions",
                          "distinct_words"]
    tokenizer = PTBTokenizer()
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDICTIONS)})
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(REFERENCES)})
    bleu, _ = Bleu(4).compute_score(gts, res)
    meteor = Meteor()
    expected = {"BLEU-1": bleu[0], "BLEU-2": bleu[1], "BLEU-3": bleu[2], "BLEU-4": bleu[3],
                "METEOR": meteor.compute_score(gts, res)[0], "ROUGE-L": Rouge().compute_score(gts, res)[0],
                "CIDEr": Cider().compute_score(gts, res)[0]}
    for key, value in expected.items():
        assert ours[key] == pytest.approx(float(value), abs=1e-12), key
    assert 0 < ours["CIDEr"] < 10  # toolkit scale, not x100


@slow
@needs_java
def test_caption_metrics_as_an_evaluate_module():
    import evaluate

    from modeling_xattn.training import caption_metric

    metric = evaluate.load(caption_metric.__file__)
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert result == caption_metrics(PREDICTIONS, REFERENCES)


def test_caption_metrics_without_java_is_a_clear_error(monkeypatch):
    import modeling_xattn.training.metrics as metrics

    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.raises(metrics.JavaNotFoundError, match="METEOR.*tokenize=False"):
        caption_metrics(PREDICTIONS, REFERENCES)
    plain = caption_metrics(PREDICTIONS, REFERENCES, tokenize=False)
    assert set(plain) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr", "distinct_captions",
                          "distinct_words"}
    assert caption_metrics(["a b c d"], [["a b c d"]], tokenize=False)["BLEU-4"] == pytest.approx(1.0, abs=1e-6)


def test_recall_with_several_captions_per_image_and_ties():
    # 2 images, 4 captions: captions 0,1 belong to image 0; captions 2,3 to image 1
    owner = torch.tensor([0, 0, 1, 1])
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2],   # image 0: best caption 1 (a hit) -> rank 1
                           [0.8, 0.1, 0.3, 0.3]])  # image 1: caption 0 first (miss), then 2 and 3 tie
    metrics = retrieval_metrics(scores, owner, ks=(1, 2))
    assert metrics["i2t_R@1"] == 50.0 and metrics["i2t_R@2"] == 100.0
    assert metrics["i2t_mean_rank"] == 1.5
    # text->image: caption 0 ranks image 1 first (miss), 1 hits, 2 ranks image 0 first (miss), 3 hits
    assert metrics["t2i_R@1"] == 50.0 and metrics["t2i_R@2"] == 100.0
    # exact ties break by index, deterministically
    tied = recall_at_k(torch.zeros(1, 3), torch.tensor([[False, True, False]]), ks=(1, 2))
    assert tied["R@1"] == 0.0 and tied["R@2"] == 100.0 and tied["median_rank"] == 2.0


def test_recall_without_any_hit_ranks_past_the_gallery():
    result = recall_at_k(torch.rand(2, 4), torch.zeros(2, 4, dtype=torch.bool))
    assert result["R@10"] == 0.0 and result["mean_rank"] == 5.0


def test_classification_accuracy_and_macro_f1():
    metrics = classification_metrics([0, 1, 2, 2, 1, 0], [0, 1, 2, 1, -100, 0], num_labels=3)
    assert metrics["accuracy"] == pytest.approx(80.0)
    # class 0: f1 1; class 1: tp1 fn1 -> 2/3; class 2: tp1 fp1 -> 2/3
    assert metrics["macro_f1"] == pytest.approx(100 * (1 + 2 / 3 + 2 / 3) / 3)


def test_vqa_accuracy_soft_score():
    humans = [["yes"] * 2 + ["no"] * 8, ["two"] * 3 + ["2"] * 7, ["red"] * 10]
    assert vqa_accuracy(["yes", "two", "blue"], humans) == pytest.approx(100 * (2 / 3 + 1 + 0) / 3)


def test_caption_diversity_counts_captions_and_words():
    from modeling_xattn.training.metrics import caption_diversity

    captions = ["A dog runs .", "a dog runs", "a cat sleeps .", "A dog runs on grass ."]
    # case and punctuation do not make a caption different
    assert caption_diversity(captions) == {"distinct_captions": 3, "distinct_words": 7}
