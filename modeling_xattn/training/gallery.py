"""Two-stage gallery search, as the evaluation, `predict` and the benchmark run it: every image and text encoded once,
the unimodal embeddings shortlist each query's top k, and the cross-attention matching score re-ranks the shortlist.
Each function takes a retrieval or multi-task model (`model.xattn`, `model.retrieval`). Training code: the pipelines
and the model card's usage score pairs through `itm_score`, so the Hub files do not carry this."""

from __future__ import annotations

import torch
from transformers.utils import logging

from modeling_xattn.modeling_xattn import full_precision

# How two-stage retrieval scores a shortlisted pair: the matching log-probability alone, or plus the embeddings'
# cosine (BLIP's and LAVIS's re-ranking add the cosine of the unimodal embeddings to the matching head's logit; here
# to its log-probability).
RERANK_SCORES = ("itm", "itm+similarity")


@torch.inference_mode()
def encode_gallery_images(model, pixel_values: torch.Tensor, batch_size: int = 64, progress: bool = False):
    """Encode every image once, in batches: region tokens `(N, R, D)` for re-ranking and embeddings `(N, P)`.
    `progress`: a bar (in images) with an estimate of the time left."""
    tokens, embeds = [], []
    bar = _progress(len(pixel_values), "encoding images", "image", progress)
    for chunk in pixel_values.split(batch_size):
        image_tokens, _ = model.xattn.encode_image(chunk.to(model.device))
        tokens.append(image_tokens)
        embeds.append(model.retrieval.embed_image(image_tokens))
        bar.update(len(chunk))
    bar.close()
    return torch.cat(tokens), torch.cat(embeds)

@torch.inference_mode()
def encode_gallery_texts(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 256,
                         progress: bool = False):
    """Encode every text once, in batches: tokens `(M, L, D)` (before fusion), their mask, embeddings `(M, P)`.
    `progress`: a bar (in texts) with an estimate of the time left."""
    tokens, embeds = [], []
    bar = _progress(len(input_ids), "encoding texts", "text", progress)
    for ids, mask in zip(input_ids.split(batch_size), attention_mask.split(batch_size)):
        text_tokens = model.xattn.encode_text(ids.to(model.device), mask.to(model.device))
        tokens.append(text_tokens)
        embeds.append(model.retrieval.embed_text(text_tokens, mask.to(model.device)))
        bar.update(len(ids))
    bar.close()
    return torch.cat(tokens), attention_mask.to(model.device), torch.cat(embeds)

@torch.inference_mode()
def pair_scores(model, image_tokens, text_tokens, text_mask, image_index, text_index, batch_size: int = 256,
                reuse: bool = False, progress: bool | str = False):
    """Matching log-probability of each (image_index[n], text_index[n]) pair through the fusion layers.
    `progress`: a bar in pairs (its rate is pairs/s) with an estimate of the time left; a string names it.

    With `reuse`, the first fusion layer's projections of each image and each text that takes part are computed
    once (`cross_projections`) and gathered for every pair instead of being recomputed per pair, and the pairs
    are scored in image order, so that the pairs of one image share a batch. The scores are the same either way
    (tested). It is off by default: on a CPU the gathering cost as much as it saved (README, Performance), and
    it holds every taking-part image's and text's projections in memory at once."""
    if len(image_index) == 0:  # nothing shortlisted (k = 0): no fusion call on an empty batch
        return torch.zeros(0, device=image_tokens.device)
    if reuse:
        order = torch.argsort(image_index * len(text_tokens) + text_index)
        image_index, text_index = image_index[order], text_index[order]
        images_used, image_slot = torch.unique(image_index, return_inverse=True)
        texts_used, text_slot = torch.unique(text_index, return_inverse=True)
        layer = model.xattn.layers[0]
        projected = {**_in_chunks(lambda i: layer.cross_projections(image=image_tokens[i]), images_used, batch_size),
                     **_in_chunks(lambda i: layer.cross_projections(text=text_tokens[i]), texts_used, batch_size)}
    scores = []
    bar = _progress(len(image_index), progress if isinstance(progress, str) else "re-ranking", "pair",
                    bool(progress))
    for start in range(0, len(image_index), batch_size):
        images, texts = image_index[start:start + batch_size], text_index[start:start + batch_size]
        first_layer = None
        if reuse:
            slots = {"image": image_slot[start:start + batch_size], "text": text_slot[start:start + batch_size]}
            first_layer = {name: value.index_select(_batch_axis(name), slots[name.split("_")[0]])
                           for name, value in projected.items()}
        fused = model.xattn.fuse(text_tokens[texts], text_mask[texts], image_tokens[images],
                                first_layer_projections=first_layer)
        scores.append(model.retrieval.itm(fused.pooler_output).float().log_softmax(-1)[:, 1])
        bar.update(len(images))
    bar.close()
    scores = torch.cat(scores)
    if reuse:  # back to the order of the pairs given
        scores = torch.empty_like(scores).scatter_(0, order, scores)
    return scores

@torch.inference_mode()
def rank(model, images: tuple, texts: tuple, direction: str = "i2t", k: int = 128, exhaustive: bool = False,
         batch_size: int = 256, reuse: bool = False, progress: bool = False,
         score: str = "itm+similarity") -> tuple[torch.Tensor, int]:
    """Two-stage retrieval: the unimodal embeddings shortlist each query's top `k`, the cross-attention matching
    score re-ranks the shortlist. `images` = `encode_gallery_images(...)`, `texts` = `encode_gallery_texts(...)`.

    Returns a `(num_images, num_texts)` score matrix, higher = better (rows are the queries for `"i2t"`,
    columns for `"t2i"`): shortlisted pairs hold their matching log-probability (`score="itm"`) or that plus the
    cosine of the pair's embeddings (`score="itm+similarity"`, the default; BLIP and LAVIS add the cosine to the
    matching logit), the others
    their embedding similarity minus 1e4 (ranked after the shortlist, in embedding order); and the number of pairs
    scored by cross-attention. `exhaustive=True` scores every pair; with `k >=` the gallery size both give the same
    matrix.
    `reuse`: see `pair_scores`. `progress`: a bar over the pairs scored (pairs/s, time left).
    """
    if direction not in ("i2t", "t2i"):
        raise ValueError(f"direction must be 'i2t' or 't2i', got {direction!r}")
    if score not in RERANK_SCORES:
        raise ValueError(f"score must be one of {RERANK_SCORES}, got {score!r}")
    image_tokens, image_embeds = images
    text_tokens, text_mask, text_embeds = texts
    similarity = model.retrieval.similarity(image_embeds, text_embeds).float()  # (N, M)
    queries = similarity if direction == "i2t" else similarity.T
    if exhaustive or k >= queries.shape[1]:
        shortlist = torch.ones_like(queries, dtype=torch.bool)
    else:
        top = queries.topk(k, dim=1).indices
        shortlist = torch.zeros_like(queries, dtype=torch.bool).scatter_(1, top, True)
    if direction == "t2i":
        shortlist = shortlist.T
    image_index, text_index = shortlist.nonzero(as_tuple=True)
    scores = similarity - 1e4
    matching = pair_scores(model, image_tokens, text_tokens, text_mask, image_index, text_index, batch_size, reuse,
                           progress and f"re-ranking {direction}")
    if score == "itm+similarity":  # the embeddings are L2-normalised: their dot product is the cosine
        with full_precision(image_embeds):
            cosine = image_embeds.float() @ text_embeds.float().T  # (N, M), as `similarity`
        matching = matching + cosine[image_index, text_index]
    scores[image_index, text_index] = matching
    return scores, len(image_index)


def _batch_axis(name: str) -> int:
    """The batch axis of a `cross_projections` output: the second for stacked keys/values `(2, B, ...)`, the first
    for queries `(B, ...)`."""
    return 1 if "key_value" in name else 0


def _progress(total: int, desc: str, unit: str, enabled: bool):
    """A progress bar (transformers' tqdm, so `transformers.utils.logging.disable_progress_bar()` silences it) that
    shows the rate and the time left; a no-op bar when not `enabled`."""
    return logging.tqdm(total=total, desc=desc, unit=unit, disable=not enabled, unit_scale=True, dynamic_ncols=True)


def _in_chunks(project, index: torch.Tensor, batch_size: int) -> dict:
    """`project(index_chunk)` over `index` in chunks, each output concatenated along its batch axis."""
    parts: dict[str, list] = {}
    for chunk in index.split(batch_size):
        for name, value in project(chunk).items():
            parts.setdefault(name, []).append(value)
    return {name: torch.cat(values, dim=_batch_axis(name)) for name, values in parts.items()}


__all__ = ["RERANK_SCORES", "encode_gallery_images", "encode_gallery_texts", "pair_scores", "rank"]
