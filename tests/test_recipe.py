"""The training recipe, piece by piece: the recipe switch, the learned temperature, SigLIP's loss, attention pooling,
the gated cross-attention, weight-decay exclusions, the schedule and the seeded crops."""

import math

import pytest
import torch
from conftest import make_batch
from PIL import Image

from modeling_xattn import XAttnConfig, XAttnForMultiTask
from modeling_xattn.modeling_xattn import MAX_LOGIT_SCALE, XAttnRetrievalHead
from modeling_xattn.training.collate import XAttnCollator
from modeling_xattn.training.data.views import CaptionPerPhoto, RandomResizedCrops, crop_fraction
from modeling_xattn.training.gallery import encode_gallery_images, encode_gallery_texts, rank
from modeling_xattn.training.main import build_config, build_model, parse_args
from modeling_xattn.training.optimization import decay_excluded, learning_rate_factor, parameter_groups
from modeling_xattn.training.options import RECIPES


def tiny(**overrides):
    return XAttnForMultiTask(XAttnConfig.from_preset("tiny", **overrides))


# --------------------------------------------------------------------------------------------- the recipe switch


def test_paper_recipe_sets_every_literal_choice():
    paper = parse_args(["--recipe", "paper"])
    assert paper.contrastive_loss == "margin"  # Formula 2 as written
    assert paper.optimizer == "adam" and paper.weight_decay == 1e-4 and paper.decay_exclusions is False
    assert paper.lr_decay_beta == 0.5 and paper.lr_scheduler == "constant" and paper.warmup_steps == 0  # Formula 5
    assert paper.random_crop_scale == 1.0  # no augmentation
    assert paper.fusion_gate is False and paper.retrieval_pooling == "mean" and paper.learnable_temperature is False
    assert paper.learning_rate == 1e-3 and paper.batch_size == 32
    assert paper.lambda_itm == 0.0 and paper.max_grad_norm == 0.0  # no matching loss, no clipping: the paper has neither
    assert set(RECIPES["paper"]) == set(RECIPES["default"])  # both recipes decide the same options


def test_default_recipe_and_explicit_options_win():
    default = parse_args([])
    for name, value in RECIPES["default"].items():
        assert getattr(default, name) == value, name
    assert default.contrastive_loss == "infonce" and default.optimizer == "adamw"
    mixed = parse_args(["--recipe", "paper", "--contrastive_loss", "infonce", "--fusion_gate"])
    assert mixed.contrastive_loss == "infonce" and mixed.fusion_gate is True and mixed.optimizer == "adam"
    assert parse_args(["--no-fusion_gate"]).fusion_gate is False


# --------------------------------------------------------------------------------------------- retrieval losses


def test_temperature_is_learned_and_clamped():
    retrieval = tiny(contrastive_loss="infonce", learnable_temperature=True).retrieval
    assert retrieval.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    images = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(4, 32), dim=-1)
    loss = retrieval.contrastive_loss(images, texts, ~torch.eye(4, dtype=torch.bool))
    loss.backward()
    assert retrieval.logit_scale.grad is not None and retrieval.logit_scale.grad.abs() > 0
    with torch.no_grad():
        retrieval.logit_scale.fill_(10.0)  # exp(10) ~ 22026: clamped to 100
    assert retrieval.scale().item() == pytest.approx(100.0)
    torch.testing.assert_close(retrieval.similarity(images, texts), images @ texts.T * 100.0)
    assert MAX_LOGIT_SCALE == pytest.approx(math.log(100))
    fixed = tiny(contrastive_loss="infonce", learnable_temperature=False).retrieval
    assert fixed.logit_scale is None and fixed.scale() == pytest.approx(1 / 0.07)


def test_sigmoid_loss_by_hand():
    """SigLIP: -1/B Σ_ij log σ(z_ij (t·cos_ij + b)), t = 10 and b = -10 at the start."""
    retrieval = XAttnRetrievalHead(XAttnConfig.from_preset("tiny", contrastive_loss="sigmoid"))
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    cosine = images @ texts.T
    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    expected = sum(-math.log(1 / (1 + math.exp(-signs[i, j] * (10 * cosine[i, j] - 10))))
                   for i in range(2) for j in range(2)) / 2
    loss = retrieval.contrastive_loss(images, texts, ~torch.eye(2, dtype=torch.bool))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert retrieval.logit_bias.item() == -10.0


def test_attention_pooling_embeds_and_trains():
    model = tiny(retrieval_pooling="attention", contrastive_loss="infonce")
    batch = make_batch(model.config, batch_size=3)
    out = model(pixel_values=batch["pixel_values"], caption_input_ids=batch["input_ids"],
                caption_attention_mask=batch["attention_mask"])
    out.loss.backward()
    for name in ("retrieval.image_pool.probe", "retrieval.text_pool.probe"):
        assert model.get_parameter(name).grad.abs().sum() > 0, name
    assert torch.allclose(out.image_embeds.norm(dim=-1), torch.ones(3))
    # padding does not reach the pooled text
    ids, mask = batch["input_ids"][:1], batch["attention_mask"][:1]
    padded = torch.cat([ids, torch.full((1, 3), model.config.pad_token_id)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 3, dtype=mask.dtype)], dim=1)
    model.eval()
    torch.testing.assert_close(model.get_text_features(ids, mask), model.get_text_features(padded, padded_mask))


# --------------------------------------------------------------------------------------------- the gate


def test_closed_gate_gives_exactly_the_concatenation_model():
    torch.manual_seed(0)
    gated = tiny(fusion_gate=True).eval()
    concat = tiny(fusion_type="concat").eval()
    loaded = concat.load_state_dict(gated.state_dict(), strict=False)
    assert not loaded.missing_keys
    assert loaded.unexpected_keys and all(".cross_attention." in k for k in loaded.unexpected_keys)
    batch = make_batch(gated.config, batch_size=2)
    inputs = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")}
    a, b = gated.xattn(**inputs), concat.xattn(**inputs)
    assert torch.equal(a.pooler_output, b.pooler_output)
    assert torch.equal(a.image_last_hidden_state, b.image_last_hidden_state)
    assert torch.equal(gated.generate(batch["pixel_values"], max_new_tokens=5),
                       concat.generate(batch["pixel_values"], max_new_tokens=5))
    # opened, the cross-attention changes the output, and the gate gets a gradient from the start
    gated.train()
    out = gated(**inputs, labels=torch.tensor([0, 1]))
    out.loss.backward()
    gate = gated.get_parameter("xattn.layers.0.text_block.cross_attention.gate")
    assert gate.item() == 0.0 and gate.grad.abs() > 0
    with torch.no_grad():
        gate.fill_(1.0)
    gated.eval()
    assert not torch.equal(gated.xattn(**inputs).pooler_output, b.pooler_output)


def test_a_closed_gate_starves_the_cross_attention_and_a_small_opening_feeds_it():
    """At g = 0 the cross-attention's own weights get no gradient (their output is multiplied by tanh(0)); with
    `fusion_gate_init` they learn from the first step."""
    grads = {}
    for opening in (0.0, 0.1):
        torch.manual_seed(0)
        model = tiny(fusion_gate=True, fusion_gate_init=opening)
        batch = make_batch(model.config, batch_size=2)
        model(**batch, labels=torch.tensor([0, 1])).loss.backward()
        layer = model.xattn.layers[0].text_block.cross_attention
        assert layer.gate.item() == pytest.approx(opening)
        grads[opening] = sum(p.grad.abs().sum().item() for p in layer.attention.parameters())
    assert grads[0.0] == 0.0 and grads[0.1] > 0.0


def test_caption_label_smoothing_is_the_smoothed_shifted_cross_entropy():
    from modeling_xattn.modeling_xattn import XAttnCaptionHead, caption_labels

    torch.manual_seed(0)
    config = XAttnConfig.from_preset("tiny")
    plain = XAttnCaptionHead(config).eval()
    smoothed = XAttnCaptionHead(XAttnConfig.from_preset("tiny", caption_label_smoothing=0.1)).eval()
    smoothed.load_state_dict(plain.state_dict())
    batch = make_batch(config, batch_size=2, pad_last=2)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = caption_labels(ids, mask, config.pad_token_id)
    memory = torch.randn(2, 5, config.hidden_size)
    memory_mask = torch.ones(2, 5, dtype=torch.long)
    out_plain = plain(plain.projection(memory), memory_mask, ids, mask, labels)
    out = smoothed(smoothed.projection(memory), memory_mask, ids, mask, labels)
    assert torch.equal(out.logits, out_plain.logits)  # the same weights, the same predictions
    # by hand: token t predicts token t+1; (1 - e) * CE + e * the mean over the vocabulary of -log p
    log_probs = out.logits[:, :-1].float().log_softmax(-1).reshape(-1, out.logits.shape[-1])
    target = labels[:, 1:].reshape(-1)
    log_probs, target = log_probs[target != -100], target[target != -100]
    nll = -log_probs.gather(1, target[:, None]).mean()
    assert out_plain.loss.item() == pytest.approx(nll.item(), rel=1e-5)  # 0: Formula 3 as written
    assert out.loss.item() == pytest.approx((0.9 * nll - 0.1 * log_probs.mean()).item(), rel=1e-5)
    with pytest.raises(ValueError, match="caption_label_smoothing"):
        XAttnConfig.from_preset("tiny", caption_label_smoothing=1.0)


def test_caption_dropout_reaches_the_decoder_and_nothing_else(processor):
    def dropouts(module):
        return {m.p for m in module.modules() if isinstance(m, torch.nn.Dropout)}

    def built(args):
        return build_model(args, build_config(args, {"captioning"}, [], len(processor.tokenizer)), processor.tokenizer)

    preset = built(parse_args([]))
    assert dropouts(preset.captioner.text_decoder) == {0.1}  # the preset's, BERT's and BLIP's decoder's
    model = built(parse_args(["--caption_dropout", "0.3"]))
    assert dropouts(model.captioner.text_decoder) == {0.3}
    assert model.config.decoder_config.attention_probs_dropout_prob == 0.3
    assert model.config.hidden_dropout_prob == preset.config.hidden_dropout_prob  # the fusion layers keep theirs
    assert model.config.decoder_config.hidden_size == preset.config.decoder_config.hidden_size  # the preset's sizes kept


def test_gated_reranking_reuses_projections_exactly():
    torch.manual_seed(0)
    model = tiny(fusion_gate=True).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".gate"):
                param.fill_(0.7)
    batch = make_batch(model.config, batch_size=3)
    images = encode_gallery_images(model, batch["pixel_values"])
    texts = encode_gallery_texts(model, batch["input_ids"], batch["attention_mask"])
    plain, _ = rank(model, images, texts, exhaustive=True)
    reused, _ = rank(model, images, texts, exhaustive=True, reuse=True)
    torch.testing.assert_close(plain, reused)


# --------------------------------------------------------------------------------------------- optimisation


def test_excluded_parameters_get_no_decay():
    model = tiny(fusion_gate=True, retrieval_pooling="attention", contrastive_loss="infonce",
                 learnable_temperature=True)
    excluded = decay_excluded(model)
    for name in ("xattn.layers.0.text_block.cross_attention.gate", "retrieval.logit_scale",
                 "retrieval.image_pool.probe", "xattn.fusion_projection.bias", "xattn.vision_model.layer_norm.weight",
                 "xattn.vision_model.row_embeddings.weight", "xattn.text_model.embeddings.word_embeddings.weight"):
        assert name in excluded, name
    assert "xattn.fusion_projection.weight" not in excluded
    groups = parameter_groups(model, 1e-3, weight_decay=0.5, decay_exclusions=True)
    optimizer = torch.optim.AdamW(groups)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no loss gradient: only the decay moves a weight
    optimizer.step()
    for name, p in model.named_parameters():
        moved = not torch.equal(p, before[name])
        assert moved == (name not in excluded and bool(before[name].abs().sum() > 0)), name
    # without exclusions every weight decays (the paper's reading)
    assert all(g["weight_decay"] == 0.5 for g in parameter_groups(model, 1e-3, weight_decay=0.5))


def test_learning_rate_schedule():
    assert learning_rate_factor(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert learning_rate_factor(50, 100, warmup_steps=10) == 1.0  # constant after warm-up
    assert learning_rate_factor(9, 100, 10, "cosine") == pytest.approx(1.0)  # the warm-up's last step
    # the cosine starts after the warm-up: 45 of its 90 steps is half way
    assert learning_rate_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert learning_rate_factor(50, 100, 0, "cosine") == pytest.approx(0.5)
    assert learning_rate_factor(100, 100, 0, "cosine") == pytest.approx(0.0)
    # a time budget half spent counts as half the run, whatever the step count says
    assert learning_rate_factor(10, 10**6, 0, "cosine", time_fraction=0.5) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="scheduler"):
        learning_rate_factor(0, 10, 0, "linear")


# --------------------------------------------------------------------------------------------- augmentation


def test_random_crops_are_seeded_and_reproducible():
    rows = [{"image": Image.new("RGB", (40, 30), (i, 0, 0)), "captions": ["a"], "image_id": i} for i in range(20)]
    crops = RandomResizedCrops(rows, scale=0.5, seed=3)
    boxes = [crops[i]["crop_box"] for i in range(20)]
    assert boxes == [RandomResizedCrops(rows, scale=0.5, seed=3)[i]["crop_box"] for i in range(20)]
    assert boxes != [RandomResizedCrops(rows, scale=0.5, seed=4)[i]["crop_box"] for i in range(20)]
    torch.manual_seed(123)  # the global generator plays no part
    assert [crops[i]["crop_box"] for i in range(20)] == boxes
    crops.set_epoch(1)
    assert [crops[i]["crop_box"] for i in range(20)] != boxes  # a new epoch, new crops
    for left, top, right, bottom in boxes:
        assert 0 <= left < right <= 1 and 0 <= top < bottom <= 1
        assert 0.5 - 1e-6 <= (right - left) * (bottom - top) <= 1 + 1e-6
        assert 3 / 4 - 1e-6 <= (right - left) / (bottom - top) <= 4 / 3 + 1e-6
    assert "crop_box" not in RandomResizedCrops(rows, scale=1.0)[0]  # scale 1: no augmentation
    image = Image.new("RGB", (100, 50))
    assert crop_fraction(image, (0.1, 0.2, 0.6, 1.0)).size == (50, 40)
    with pytest.raises(ValueError, match="scale"):
        RandomResizedCrops(rows, scale=0.0)


def test_one_caption_per_photo_is_seeded_per_epoch_and_reaches_every_caption():
    rows = [{"image": None, "captions": [f"{i}-{c}" for c in range(5)], "image_id": i} for i in range(40)]
    rows.append({"image": None, "captions": [], "image_id": 40})  # no caption: the row as it is
    sampled = CaptionPerPhoto(rows, seed=3)
    assert len(sampled) == 41 and "caption_index" not in sampled[40]
    drawn = [sampled[i]["caption_index"] for i in range(40)]
    assert drawn == [CaptionPerPhoto(rows, seed=3)[i]["caption_index"] for i in range(40)]
    assert set(drawn) == set(range(5))
    torch.manual_seed(7)  # the global generator plays no part
    assert [sampled[i]["caption_index"] for i in range(40)] == drawn
    # wrapped in crops, one set_epoch moves both draws to the next pass
    cropped = RandomResizedCrops(sampled, scale=0.5, seed=3)
    cropped.set_epoch(1)
    assert [sampled[i]["caption_index"] for i in range(40)] != drawn


def test_collator_applies_the_crop(processor):
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 32, 64))  # left half black
    collate = XAttnCollator(processor, targets="caption")
    whole = collate([{"image": image, "captions": ["a photo"], "image_id": 0}])["pixel_values"]
    left = collate([{"image": image, "captions": ["a photo"], "image_id": 0, "crop_box": (0.0, 0.0, 0.5, 1.0)}])
    assert left["pixel_values"].mean() < whole.mean()  # only the black half is left


def test_reranking_adds_the_embeddings_cosine_to_the_matching_score():
    torch.manual_seed(0)
    model = tiny(fusion_gate=True, fusion_gate_init=0.5).eval()
    batch = make_batch(model.config, batch_size=4)
    images = encode_gallery_images(model, batch["pixel_values"])
    texts = encode_gallery_texts(model, batch["input_ids"], batch["attention_mask"])
    cosine = images[1].float() @ texts[2].float().T
    for direction in ("i2t", "t2i"):
        alone, pairs = rank(model, images, texts, direction=direction, k=2, score="itm")
        summed, summed_pairs = rank(model, images, texts, direction=direction, k=2)  # the default
        assert pairs == summed_pairs == 8
        shortlisted = alone > -5e3
        torch.testing.assert_close(summed[shortlisted], alone[shortlisted] + cosine[shortlisted])
        assert torch.equal(summed[~shortlisted], alone[~shortlisted])  # the rest keep the embeddings' order
    with pytest.raises(ValueError, match="score must be one of"):
        rank(model, images, texts, score="similarity")


def test_gates_are_read_by_layer_and_direction():
    from modeling_xattn.training.loop import gate_openings

    model = tiny(fusion_gate=True, fusion_gate_init=0.5)
    openings = gate_openings(model.config, model)
    assert set(openings) == {f"gate_{name}_{layer}" for name in ("text_from_image", "image_from_text")
                             for layer in range(model.config.num_fusion_layers)}
    assert all(value == pytest.approx(math.tanh(0.5)) for value in openings.values())
    assert gate_openings(tiny().config, tiny()) == {}  # the paper's ungated layers have no gate


def test_matching_is_judged_against_each_photos_hardest_other_caption(monkeypatch):
    from modeling_xattn.training.evaluation import matching_against_hardest

    model = tiny(fusion_gate=True)
    captions = ["a dog", "a cat", "a car", "a cup", "a dog", "a cup"]
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    similarity = torch.tensor([[5.0, 4.0, 1.0, 2.0, 9.0, 0.0],  # c4 says "a dog" like photo 0's own c0: not a negative
                               [3.0, 1.0, 9.0, 9.0, 0.0, 8.0],  # c5 repeats its own c3's text
                               [4.0, 3.0, 0.0, 0.0, 9.0, 9.0]])  # c0 is "a dog", photo 2's own first caption's text
    probability = {(0, 0): 0.9, (1, 2): 0.4, (2, 4): 0.8, (0, 3): 0.2, (1, 0): 0.6, (2, 1): 0.1}
    asked = []

    def pair_scores(scored_model, image_tokens, text_tokens, text_mask, images, texts, batch_size, *rest):
        assert scored_model is model
        asked.extend(zip(images.tolist(), texts.tolist()))
        return torch.tensor([probability[pair] for pair in zip(images.tolist(), texts.tolist())]).log()

    monkeypatch.setattr("modeling_xattn.training.evaluation.pair_scores", pair_scores)
    monkeypatch.setattr(model.retrieval, "similarity", lambda images, texts: similarity)
    encoded = ((torch.zeros(3, 2, 4), torch.zeros(3, 4)), (torch.zeros(6, 2, 4), torch.ones(6, 2), torch.zeros(6, 4)))
    result = matching_against_hardest(model, encoded, owner, captions, batch_size=4)
    assert sorted(asked) == sorted(probability)  # each photo's first caption and its hardest real negative
    assert result["itm_pairs"] == 6
    assert result["itm_accuracy"] == pytest.approx(50.0 * (2 / 3 + 2 / 3))
    assert result["itm_auc"] == pytest.approx(8 / 9)
    alone = matching_against_hardest(model, ((torch.zeros(1, 2, 4), torch.zeros(1, 4)),
                                             (torch.zeros(2, 2, 4), torch.ones(2, 2), torch.zeros(2, 4))),
                                     torch.tensor([0, 0]), ["a", "b"], batch_size=4)
    assert alone == {}  # one photo: no other caption to be its negative


# --------------------------------------------------------------------------------------------- the photo cache


def test_cached_photos_give_the_pixels_a_fresh_read_gives(processor, tmp_path):
    import io

    from modeling_xattn.training.collate import PhotoCache
    from modeling_xattn.training.data.schema import BadRowCounter

    photos = []
    for index, mode in enumerate(["RGB", "L", "RGB"]):
        image = Image.new("RGB", (48 + 8 * index, 40), (40 * index, 90, 200)).convert(mode)
        image.putpixel((3, 4), 17 if mode == "L" else (250, 3, 9))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        photos.append(buffer.getvalue())
    (tmp_path / "on_disk.png").write_bytes(photos[2])
    rows = [{"image": {"bytes": photos[0], "path": None}, "image_id": "a", "captions": ["one"]},
            {"image": {"bytes": photos[1], "path": None}, "image_id": "b", "captions": ["two"]},
            {"image": "on_disk.png", "image_id": "c", "captions": ["three"]},
            {"image": {"bytes": photos[0], "path": None}, "image_id": "a", "captions": ["one"],
             "crop_box": (0.1, 0.1, 0.8, 0.9)}]
    plain_counter, cached_counter = BadRowCounter(), BadRowCounter()
    plain = XAttnCollator(processor, targets="caption", image_dir=str(tmp_path), counter=plain_counter)
    cache = PhotoCache(max_bytes=2**30)
    cached = XAttnCollator(processor, targets="caption", image_dir=str(tmp_path), counter=cached_counter,
                           photo_cache=cache)
    expected = plain(rows)
    for _ in range(3):
        batch = cached(rows)
        assert batch.keys() == expected.keys()
        for key in expected:
            assert torch.equal(batch[key], expected[key]), key
    assert len(cache.entries) == 3 and cache.hits == 6 and cache.misses == 3  # the cropped row is made every time
    plain(rows), plain(rows)
    assert cached_counter.summary() == plain_counter.summary()  # the L photo's conversion is noted every time
    small = PhotoCache(max_bytes=expected["pixel_values"][0].numel() * 4)  # room for one photo's values
    XAttnCollator(processor, targets="caption", image_dir=str(tmp_path), photo_cache=small)(rows)
    assert len(small.entries) == 1 and small.used <= small.max_bytes


def test_random_matching_negatives_are_drawn_alike_among_the_real_negatives():
    from modeling_xattn.modeling_xattn import sample_negatives

    embeds = torch.nn.functional.normalize(torch.eye(4) + 0.01, dim=-1)
    images, texts = embeds, embeds.clone()
    texts[1] = images[0]  # text 1 is image 0's twin: the hard draw for image 0
    negatives = ~torch.eye(4, dtype=torch.bool)
    negatives[0, 3] = False  # image 0 and text 3 are not a real negative
    torch.manual_seed(0)
    draws = torch.stack([sample_negatives(images, texts, negatives, 0.01, uniform=True)[0] for _ in range(600)])
    counts = torch.bincount(draws[:, 0], minlength=4)
    assert counts[0] == counts[3] == 0 and min(counts[1], counts[2]) > 200  # texts 1 and 2, about alike
    hard = torch.stack([sample_negatives(images, texts, negatives, 0.01)[0] for _ in range(50)])
    assert (hard[:, 0] == 1).all()  # by similarity: always the twin
    assert torch.equal(sample_negatives(images, texts, negatives, 0.01, draw=False, uniform=True)[0],
                       sample_negatives(images, texts, negatives, 0.01, draw=False)[0])  # evaluation: the hardest
    with pytest.raises(ValueError, match="itm_negatives"):
        XAttnConfig.from_preset("tiny", itm_negatives="easy")
    assert parse_args(["--itm_negatives", "random"]).itm_negatives == "random"
