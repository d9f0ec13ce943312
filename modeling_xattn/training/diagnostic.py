"""The relational diagnostic's measurements (`--dataset relations`, data/relations.py): answer accuracy split by
question kind and subtype beside the baselines the questions allow, the pointing game on the text-to-image attention
(Zhang et al. 2016), and the matching head against each true relation statement's flipped twins."""

from __future__ import annotations

from collections import Counter, defaultdict

import torch

from modeling_xattn.training.collate import XAttnCollator
from modeling_xattn.training.data.relations import KINDS, SUBTYPES, answers_of, cell_share, pointing_cell
from modeling_xattn.training.data.schema import BadRowCounter, clean_text
from modeling_xattn.training.data.vqa import normalize_answer
from modeling_xattn.training.inference import batches


def percent(hits: int, total: int) -> float:
    return 100.0 * hits / total if total else float("nan")


def subject_tokens(tokenizer, question: str, span, input_ids: list[int]) -> list[int]:
    """The positions of the tokens that spell the characters `span` of `question` (the subject's colour word) in the
    tokenized question `input_ids` (unpadded); empty when the tokenizer's own pass gives other ids."""
    encoded = tokenizer(question, return_offsets_mapping=True)
    if encoded["input_ids"] != input_ids:
        return []
    start, end = span
    return [i for i, (left, right) in enumerate(encoded["offset_mapping"]) if right > left and left < end and right > start]


def pointing_hits(maps, tokens: list[int], cell: int, grid: int) -> list[bool]:
    """The pointing game for one question: for each layer's text-to-image attention `(heads, text length, regions)`
    of `maps`, averaged over the heads and over the word's `tokens`, whether the region it attends to most has its
    centre in `cell` of the scene's `grid` x `grid` cells (the regions form a square grid, row-major)."""
    hits = []
    for attention in maps:
        regions = attention.shape[-1]
        side = int(round(regions ** 0.5))
        if side * side != regions:
            raise ValueError(f"pointing_hits: {regions} regions do not form a square grid")
        weights = attention.float().mean(0)[tokens].mean(0)  # (regions,)
        hits.append(pointing_cell(int(weights.argmax()), side, grid) == cell)
    return hits


def answer_baselines(train_rows, test_rows, spec) -> dict:
    """Per subtype, in %: `chance` (one of the subtype's answers at random), `question_only` (the answer most often
    given to the same question text in `train_rows`, the best a model that reads only the question can learn) and
    `prior` (the most frequent answer of all training questions, what a model that reads neither can learn; an image
    alone does not say which question was asked)."""
    by_question = defaultdict(Counter)
    for row in train_rows:
        by_question[row["question"]][row["answers"][0]] += 1
    prior = Counter(row["answers"][0] for row in train_rows).most_common(1)[0][0]
    hits = defaultdict(lambda: [0, 0, 0])  # subtype: question-only hits, prior hits, rows
    for row in test_rows:
        answer, seen = row["answers"][0], by_question.get(row["question"])
        counts = hits[row["subtype"]]
        counts[0] += bool(seen) and seen.most_common(1)[0][0] == answer
        counts[1] += prior == answer
        counts[2] += 1
    return {subtype: {"chance": 100.0 / len(answers_of(subtype, spec)), "question_only": percent(q, n),
                      "prior": percent(p, n)} for subtype, (q, p, n) in hits.items()}


@torch.inference_mode()
def evaluate_relations(model, processor, dataset, batch_size: int = 64, progress: bool = False, grid: int = 3) -> dict:
    """On held-out diagnostic rows (`dataset`, from `load_split(..., "test")` of `--dataset relations`):
    - `accuracy`: top-answer accuracy (%) overall, per kind and per subtype;
    - `pointing`: per fusion layer, the share (%) of questions for which the region that the subject's colour word
      attends to most (text-to-image attention averaged over heads and over the word's tokens) lies in the
      subject's cell, with `pointing_chance`, that cell's share of the regions (absent without cross-attention);
    - `matching`: with a matching head, how often (%) it scores each true relation statement above its reversed twin
      and above its swapped twin.
    A model without a VQA classifier gives no accuracy."""
    answers = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    collate = XAttnCollator(processor, targets="question", answer_vocab=answers, counter=BadRowCounter(),
                            model="XAttnForSequenceClassification", with_row_index=True)
    correct, total = Counter(), Counter()
    hits, chance, pointed = Counter(), 0.0, 0
    matching, compared = Counter(), Counter()
    device = model.device
    maps_wanted = model.config.use_cross_attention
    for rows, batch in batches(dataset, collate, batch_size, progress, "relations"):
        pixel_values = batch["pixel_values"].to(device)
        input_ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        # the image encoded once, for the answers and for the matching head's statements
        image_tokens = model.xattn.encode_image(pixel_values)[0] if model.config.use_image else None
        fused = model.xattn(input_ids=input_ids, attention_mask=mask, image_hidden_states=image_tokens,
                            output_attentions=maps_wanted, return_dict=True)
        predicted = model.classifier(fused.pooler_output).argmax(-1).tolist()
        for row, top in zip(rows, predicted):
            right = answers[top] == normalize_answer(row["answers"][0])  # the vocabulary's answers are normalised
            for key in ("all", row["kind"], row["subtype"]):
                correct[key] += right
                total[key] += 1
        if maps_wanted and fused.text_to_image_attentions:
            regions = fused.text_to_image_attentions[0].shape[-1]
            side = int(round(regions ** 0.5))
            for i, row in enumerate(rows):
                length = int(mask[i].sum())
                tokens = subject_tokens(processor.tokenizer, clean_text(row["question"]), row["subject_span"],
                                        input_ids[i, :length].tolist())
                if not tokens:
                    continue
                cell = row["object_cells"][row["subject"]]
                chance += cell_share(cell, side, grid)
                pointed += 1
                maps = [layer[i] for layer in fused.text_to_image_attentions]
                for layer, hit in enumerate(pointing_hits(maps, tokens, cell, grid)):
                    hits[layer] += hit
        if getattr(model, "retrieval", None) is not None and model.config.lambda_itm:
            for i, row in enumerate(rows):
                for twin in ("reversed", "swapped"):
                    pairs = list(zip(row["captions"], row[f"{twin}_statements"]))
                    if not pairs:
                        continue
                    texts = [text for pair in pairs for text in pair]
                    encoded = processor.tokenizer(texts, padding=True, return_tensors="pt").to(device)
                    scores = model.itm_score(encoded["input_ids"], encoded["attention_mask"],
                                             image_hidden_states=image_tokens[i:i + 1].expand(len(texts), -1, -1))
                    true_scores, twin_scores = scores[0::2], scores[1::2]
                    matching[twin] += int((true_scores > twin_scores).sum())
                    compared[twin] += len(pairs)
    result = {}
    if total:
        result["accuracy"] = {key: percent(correct[key], total[key]) for key in
                              ("all", *KINDS, *(s for kind in KINDS for s in SUBTYPES[kind])) if total[key]}
        result["questions"] = dict(total)
    if pointed:
        result["pointing"] = {f"layer {layer + 1}": percent(hits[layer], pointed) for layer in sorted(hits)}
        result["pointing_best"] = max(result["pointing"].values())
        result["pointing_chance"] = 100.0 * chance / pointed
        result["pointed_questions"] = pointed
    if compared:
        result["matching"] = {f"true over {twin}": percent(matching[twin], compared[twin]) for twin in compared}
        result["matching_pairs"] = dict(compared)
    return result


__all__ = ["answer_baselines", "evaluate_relations", "pointing_hits", "subject_tokens"]
