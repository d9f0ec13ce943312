"""Metrics computed the way the field computes them.

- Captions: the COCO caption evaluation toolkit (pycocoevalcap): its PTB tokenizer, BLEU-1..4, METEOR, ROUGE-L and
  CIDEr-D, on the toolkit's scale (CIDEr 0.6, not 60). The PTB tokenizer and METEOR run on Java.
- Retrieval: Recall@K in both directions, where any of an image's reference captions counts as a hit (the paper's
  Top-1 / Top-5), plus mean and median rank.
- Classification: accuracy and macro-F1; VQA accuracy with the standard soft score min(#annotators / 3, 1).
"""

from __future__ import annotations

import shutil
from collections import Counter

import torch
from tqdm.auto import tqdm

from modeling_xattn.training.data.schema import clean_text, vqa_score

CAPTION_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
JAVA_METRICS = ("METEOR",)


class JavaNotFoundError(RuntimeError):
    pass


def _require_java():
    if shutil.which("java") is None:
        raise JavaNotFoundError(
            "caption_metrics needs Java (a `java` on PATH) for the COCO toolkit's PTB tokenizer and for METEOR. "
            "Install a JRE (e.g. `apt-get install default-jre-headless`). Without Java, "
            "caption_metrics(..., tokenize=False) still gives BLEU-1..4, ROUGE-L and CIDEr on lower-cased, "
            "whitespace-tokenised captions (not identical to the toolkit's numbers); METEOR is unavailable."
        )


def _simple_tokenize(text: str) -> str:
    import string

    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def _meteor(gts: dict, res: dict) -> float:
    """The toolkit's METEOR score, its Java process closed whatever happens."""
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        score, _ = meteor.compute_score(gts, res)
    finally:
        _close_meteor(meteor)
    return score


def caption_metrics(predictions: list[str], references: list[list[str]], tokenize: bool = True,
                    progress: bool = False) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of `predictions` against `references` (one list per prediction), with
    pycocoevalcap's own scorers and PTB tokenizer, so the numbers equal the toolkit's. `tokenize=False` skips the
    Java tokenizer (and METEOR) for machines without Java. `progress`: a bar over the toolkit's steps (tokenizing,
    then each scorer; METEOR's Java process is the slow one)."""
    if len(predictions) != len(references):
        raise ValueError(f"predictions ({len(predictions)}) and references ({len(references)}) differ in length")
    if not predictions:
        raise ValueError("caption_metrics needs at least one prediction")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    steps = ["tokenize", "BLEU", "METEOR", "ROUGE-L", "CIDEr"] if tokenize else ["BLEU", "ROUGE-L", "CIDEr"]
    bar = tqdm(total=len(steps), desc="caption metrics", unit="step", disable=not progress, dynamic_ncols=True)

    def step(name, compute):
        """One of the toolkit's steps, named on the bar while it runs."""
        bar.set_postfix_str(name)
        value = compute()
        bar.update()
        return value

    if tokenize:
        _require_java()
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

        tokenizer = PTBTokenizer()
        res, gts = step("tokenize", lambda: (
            tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)}),
            tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})))
    else:
        res = {i: [_simple_tokenize(p)] for i, p in enumerate(predictions)}
        gts = {i: [_simple_tokenize(r) for r in refs] for i, refs in enumerate(references)}

    results = {}
    bleu, _ = step("BLEU", lambda: Bleu(4).compute_score(gts, res, verbose=0))
    for n, value in enumerate(bleu, start=1):
        results[f"BLEU-{n}"] = float(value)
    if tokenize:
        results["METEOR"] = float(step("METEOR", lambda: _meteor(gts, res)))
    results["ROUGE-L"], _ = step("ROUGE-L", lambda: Rouge().compute_score(gts, res))
    results["CIDEr"], _ = step("CIDEr", lambda: Cider().compute_score(gts, res))
    bar.close()
    return {**{k: float(results[k]) for k in CAPTION_METRICS if k in results}, **caption_diversity(predictions)}


def caption_diversity(predictions: list[str]) -> dict:
    """How many different captions and words the model used: an average score such as CIDEr can hide a model that
    gives most photos one sentence."""
    words = {word for caption in predictions for word in _simple_tokenize(caption).split()}
    return {"distinct_captions": len({_simple_tokenize(p) for p in predictions}), "distinct_words": len(words)}


def _close_meteor(meteor):
    """pycocoevalcap keeps a Java METEOR process open; end it so repeated calls do not pile them up."""
    process = getattr(meteor, "meteor_p", None)
    if process is None:
        return
    try:
        with meteor.lock:
            process.stdin.close()
            process.kill()
            process.wait()
    except Exception:
        pass


def recall_at_k(scores: torch.Tensor, positives: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Recall@K (percent) of queries (rows) over a gallery (columns), where `positives[i, j]` marks every correct
    item. Ties are broken by gallery index (a stable sort), so the result is deterministic. Also the mean and median
    rank (1-based) of each query's first correct item."""
    if scores.shape != positives.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and positives {tuple(positives.shape)} differ in shape")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    hits = torch.gather(positives.bool(), 1, order)
    found = hits.any(dim=1)
    first = hits.float().argmax(dim=1) + 1
    first = torch.where(found, first, torch.full_like(first, scores.shape[1] + 1))  # no hit: ranked past the end
    result = {f"R@{k}": float((found & (first <= k)).float().mean() * 100) for k in ks}
    result["mean_rank"] = float(first.float().mean())
    result["median_rank"] = float(first.float().median())
    return result


def retrieval_metrics(scores: torch.Tensor, text_to_image: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Both directions from one `(num_images, num_texts)` score matrix; `text_to_image[j]` is the image of text j."""
    positives = text_to_image[None, :] == torch.arange(scores.shape[0], device=scores.device)[:, None]
    i2t = recall_at_k(scores, positives, ks)
    t2i = recall_at_k(scores.T, positives.T, ks)
    return {**{f"i2t_{k}": v for k, v in i2t.items()}, **{f"t2i_{k}": v for k, v in t2i.items()}}


def classification_metrics(predictions, labels, num_labels: int | None = None) -> dict:
    """Accuracy and macro-F1 (percent); rows labelled -100 or -1 are ignored."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    keep = labels >= 0
    predictions, labels = predictions[keep], labels[keep]
    if len(labels) == 0:
        raise ValueError("no labelled rows to score")
    num_labels = num_labels or int(max(labels.max(), predictions.max())) + 1
    f1s = []
    for c in range(num_labels):
        tp = int(((predictions == c) & (labels == c)).sum())
        fp = int(((predictions == c) & (labels != c)).sum())
        fn = int(((predictions != c) & (labels == c)).sum())
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float((predictions == labels).float().mean() * 100), "macro_f1": 100 * sum(f1s) / len(f1s)}


def vqa_accuracy(predicted_answers: list[str], human_answers: list[list[str]]) -> float:
    """VQA accuracy (percent): each prediction scores min(#annotators who gave it / 3, 1)."""
    if len(predicted_answers) != len(human_answers):
        raise ValueError("predicted_answers and human_answers differ in length")
    total = 0.0
    for predicted, given in zip(predicted_answers, human_answers):
        counts = Counter(clean_text(a).lower() for a in given)
        total += vqa_score(counts[clean_text(predicted).lower()])
    return 100.0 * total / max(len(predicted_answers), 1)


def recall_at_1_by_k(scores: torch.Tensor, similarity: torch.Tensor, text_to_image: torch.Tensor, direction: str,
                     ks) -> dict[int, float]:
    """R@1 of two-stage ranking for every shortlist size in `ks`, from one ranking's `(num_images, num_texts)`
    matrix (`model.rank`) whose shortlist was at least `max(ks)` long (or exhaustive): the top k of a query by
    embedding `similarity` are inside its longer shortlist, so each smaller k re-ranks pairs already scored. What
    the benchmark picks each direction's k from."""
    queries = similarity if direction == "i2t" else similarity.T
    scored = scores if direction == "i2t" else scores.T
    curve = {}
    for k in ks:
        top = queries.topk(min(k, queries.shape[1]), dim=1).indices
        shortlist = torch.zeros_like(queries, dtype=torch.bool).scatter_(1, top, True)
        ranked = torch.where(shortlist, scored, queries - 1e4)
        ranked = ranked if direction == "i2t" else ranked.T
        curve[int(k)] = retrieval_metrics(ranked.float().cpu(), text_to_image.cpu(), ks=(1,))[f"{direction}_R@1"]
    return curve


# The paper's names for the standard figures (its Top-1/Top-5 are recall at 1 and 5, as ALBEF and BLIP report them).
PAPER_NAMES = {"i2t_R@1": "Top-1 (image->text)", "i2t_R@5": "Top-5 (image->text)", "t2i_R@1": "Top-1 (text->image)",
               "t2i_R@5": "Top-5 (text->image)", "BLEU-1": "BLEU-1", "BLEU-2": "BLEU-2", "CIDEr": "CIDEr",
               "METEOR": "METEOR", "accuracy": "accuracy", "vqa_accuracy": "VQA accuracy"}


def markdown_table(rows, columns=None) -> str:
    """One markdown table writer. `rows` is `{task: {metric: value}}` (rendered as task | metric | value | the
    paper's name for it), or a list of dicts rendered with `columns` (default: the first dict's keys). Floats get 4
    significant digits."""
    def shown(value):
        return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))

    if isinstance(rows, dict):
        rows = [{"task": task, "metric": key, "value": value, "paper": PAPER_NAMES.get(key, "")}
                for task, metrics in rows.items() for key, value in metrics.items()]
        columns = ["task", "metric", "value", "paper"]
    columns = columns or (list(rows[0]) if rows else [])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(shown(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


__all__ = ["caption_metrics", "recall_at_k", "retrieval_metrics", "classification_metrics", "vqa_accuracy",
           "CAPTION_METRICS", "JavaNotFoundError", "PAPER_NAMES", "markdown_table", "recall_at_1_by_k"]
