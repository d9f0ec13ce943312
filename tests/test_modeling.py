import pytest
import torch
import torchvision
from conftest import make_batch
from safetensors.torch import save_file
from transformers import AlbertConfig, AlbertModel

from modeling_xattn import (
    XAttnCBAM,
    XAttnConfig,
    XAttnForConditionalGeneration,
    XAttnForImageTextRetrieval,
    XAttnForMultiTask,
    XAttnForSequenceClassification,
    XAttnModel,
)
from modeling_xattn.training.backbones import from_pretrained_backbones

HEADS = [XAttnModel, XAttnForSequenceClassification, XAttnForImageTextRetrieval, XAttnForConditionalGeneration,
         XAttnForMultiTask]


def build(model_class, config, seed=0):
    torch.manual_seed(seed)
    return model_class(config).eval()


def run_head(model, batch):
    """Forward each head with the inputs it takes; returns its output. Seeded: the matching loss samples its
    negatives."""
    torch.manual_seed(0)
    if isinstance(model, XAttnForImageTextRetrieval):
        return model(**batch, return_loss=True)
    if isinstance(model, XAttnForConditionalGeneration):
        return model(pixel_values=batch["pixel_values"], decoder_input_ids=batch["input_ids"],
                     decoder_attention_mask=batch["attention_mask"])
    if isinstance(model, XAttnForMultiTask):
        return model(**batch, labels=torch.tensor([0, 1, 2]), caption_input_ids=batch["input_ids"],
                     caption_attention_mask=batch["attention_mask"])
    return model(**batch)


def test_output_shapes_per_head(tiny_config):
    batch = make_batch(tiny_config, batch_size=3, text_length=7)
    grid, hidden = tiny_config.grid_size, tiny_config.hidden_size
    with torch.no_grad():
        base = build(XAttnModel, tiny_config)(**batch, output_attentions=True)
        assert base.pooler_output.shape == (3, hidden)
        assert base.text_last_hidden_state.shape == (3, 7, hidden)
        assert base.image_last_hidden_state.shape == (3, grid * grid, hidden)
        assert base.cbam_spatial_attention.shape == (3, 1, grid, grid)
        assert len(base.text_to_image_attentions) == tiny_config.num_fusion_layers
        assert base.text_to_image_attentions[0].shape == (3, 4, 7, grid * grid)
        assert base.image_to_text_attentions[0].shape == (3, 4, grid * grid, 7)

        cls = build(XAttnForSequenceClassification, tiny_config)(**batch, labels=torch.tensor([0, 2, 1]))
        assert cls.logits.shape == (3, 3) and cls.loss.shape == ()

        ret = build(XAttnForImageTextRetrieval, tiny_config)(**batch, return_loss=True)
        assert ret.logits_per_image.shape == (3, 3) and ret.itm_logits.shape == (3, 2)
        assert ret.image_embeds.shape == (3, tiny_config.projection_dim) == ret.text_embeds.shape
        assert torch.allclose(ret.image_embeds.norm(dim=-1), torch.ones(3), atol=1e-5)
        assert ret.loss.shape == () and torch.isclose(ret.loss, ret.loss_contrastive + ret.loss_itm)

        cap = build(XAttnForConditionalGeneration, tiny_config)(
            pixel_values=batch["pixel_values"], labels=batch["input_ids"])
        assert cap.logits.shape == (3, 7, tiny_config.text_config.vocab_size) and cap.loss.shape == ()
        assert cap.encoder_hidden_states.shape == (3, 2 + grid * grid, tiny_config.decoder_config.hidden_size)

        multitask = build(XAttnForMultiTask, tiny_config)
        multi = run_head(multitask, batch)
        assert multi.logits.shape == (3, 3) and multi.logits_per_image.shape == (3, 3)
        assert multi.caption_logits.shape == (3, 7, tiny_config.text_config.vocab_size)
        # validation ranks with these embeddings instead of encoding the batch a second time: they must be the
        # unimodal embeddings of the images and captions
        image_tokens, _ = multitask.xattn.encode_image(batch["pixel_values"])
        caption_tokens = multitask.xattn.encode_text(batch["input_ids"], batch["attention_mask"])
        assert torch.allclose(multi.image_embeds, multitask.retrieval.embed_image(image_tokens), atol=1e-6)
        assert torch.allclose(multi.text_embeds, multitask.retrieval.embed_text(caption_tokens, batch["attention_mask"]),
                              atol=1e-6)


def test_loss_first_and_tuple_equivalence(tiny_config):
    batch = make_batch(tiny_config)
    model = build(XAttnForSequenceClassification, tiny_config)
    labels = torch.tensor([0, 1, 2])
    with torch.no_grad():
        as_output = model(**batch, labels=labels)
        as_tuple = model(**batch, labels=labels, return_dict=False)
    assert list(as_output.keys())[0] == "loss"
    assert isinstance(as_tuple, tuple)
    assert torch.equal(as_tuple[0], as_output.loss) and torch.equal(as_tuple[1], as_output.logits)
    with torch.no_grad():
        assert model(**batch).loss is None


@pytest.mark.parametrize("model_class", HEADS)
def test_save_load_is_exact(model_class, tiny_config, tmp_path):
    model = build(model_class, tiny_config)
    batch = make_batch(tiny_config)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    loaded = model_class.from_pretrained(tmp_path).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with torch.no_grad():
        first, second = run_head(model, batch), run_head(loaded, batch)
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second[key]), key


def test_multitask_checkpoint_loads_into_single_heads(tiny_config, tmp_path):
    multi = build(XAttnForMultiTask, tiny_config)
    multi.save_pretrained(tmp_path)
    batch = make_batch(tiny_config)
    cls = XAttnForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(multi(**batch).logits, cls(**batch).logits)


def test_every_parameter_gets_a_gradient_from_the_multitask_loss(tiny_config):
    torch.manual_seed(0)
    model = XAttnForMultiTask(tiny_config).train()
    batch = make_batch(tiny_config, batch_size=4, pad_last=2)
    out = model(**batch, labels=torch.tensor([0, 1, 2, 1]), caption_input_ids=batch["input_ids"],
                caption_attention_mask=batch["attention_mask"])
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_formula_4_weights_and_task_subsets(tiny_config):
    config = XAttnConfig.from_preset("tiny", lambda_ce=0.5, lambda_cl=2.0, lambda_seq=0.25, lambda_itm=3.0)
    model = build(XAttnForMultiTask, config)
    batch = make_batch(config)
    captions = dict(caption_input_ids=batch["input_ids"], caption_attention_mask=batch["attention_mask"])
    with torch.no_grad():
        full = model(**batch, labels=torch.tensor([0, 1, 2]), **captions)
        expected = 0.5 * full.loss_ce + 2.0 * full.loss_cl + 3.0 * full.loss_itm + 0.25 * full.loss_seq
        assert torch.isclose(full.loss, expected)
        only_cls = model(**batch, labels=torch.tensor([0, 1, 2]))
        assert only_cls.loss_cl is None and only_cls.loss_itm is None and only_cls.loss_seq is None
        assert torch.isclose(only_cls.loss, 0.5 * only_cls.loss_ce)
        only_captions = model(pixel_values=batch["pixel_values"], **captions)
        assert only_captions.loss_ce is None and only_captions.logits is None
        assert torch.isclose(only_captions.loss, 2.0 * only_captions.loss_cl + 3.0 * only_captions.loss_itm
                             + 0.25 * only_captions.loss_seq)
        # a caption-only batch's labels: a loss of 0 (masked, so the step has no branch on the data)
        unlabeled = model(**batch, labels=torch.tensor([-100, -100, -100]))
        assert unlabeled.loss_ce.item() == 0.0 and unlabeled.loss.item() == 0.0 and unlabeled.logits is not None
        unweighted = build(XAttnForMultiTask, XAttnConfig.from_preset("tiny", lambda_ce=0.0))
        assert unweighted(**batch, labels=torch.tensor([0, 1, 2]), **captions).loss_ce is None  # weighted 0: off


def test_padding_does_not_change_outputs(tiny_config):
    model = build(XAttnForSequenceClassification, tiny_config)
    batch = make_batch(tiny_config, batch_size=1, text_length=6)
    padded = {k: v for k, v in batch.items()}
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = model(**batch, output_attentions=True)
        pad = model(**padded, output_attentions=True)
        base_plain = model.xattn(**batch)
        base_pad = model.xattn(**padded)
    torch.testing.assert_close(pad.logits, plain.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base_pad.image_last_hidden_state, base_plain.image_last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(base_pad.text_last_hidden_state[:, :6], base_plain.text_last_hidden_state, rtol=1e-5, atol=1e-5)
    # image regions never attend to padding
    assert pad.image_to_text_attentions[0][..., 6:].abs().max() == 0


def test_one_item_alone_equals_the_same_item_in_a_batch(tiny_config):
    batch = make_batch(tiny_config, batch_size=4, pad_last=2)
    for model_class in (XAttnForSequenceClassification, XAttnForMultiTask):
        model = build(model_class, tiny_config)
        with torch.no_grad():
            together = model(**batch).logits
            for i in range(4):
                alone = model(**{k: v[i : i + 1] for k, v in batch.items()}).logits
                torch.testing.assert_close(alone[0], together[i], rtol=1e-5, atol=1e-5)


def test_sdpa_path_equals_explicit_attention_path(tiny_config):
    model = build(XAttnModel, tiny_config)
    batch = make_batch(tiny_config, pad_last=2)
    with torch.no_grad():
        fast = model(**batch)
        explicit = model(**batch, output_attentions=True)
    torch.testing.assert_close(fast.pooler_output, explicit.pooler_output, rtol=1e-5, atol=1e-5)
    for maps in (explicit.text_to_image_attentions, explicit.image_to_text_attentions):
        for layer_map in maps:
            torch.testing.assert_close(layer_map.sum(-1), torch.ones_like(layer_map.sum(-1)))


def parameter_names(config):
    return {name for name, _ in XAttnForMultiTask(config).named_parameters()}


def test_each_ablation_switch_changes_the_architecture(tiny_config):
    full = parameter_names(tiny_config)
    assert any("cross_attention" in n for n in full) and any("cbam" in n for n in full)
    assert any(n.startswith("xattn.text_model.") for n in full) and any(n.startswith("xattn.vision_model.") for n in full)

    concat = parameter_names(XAttnConfig.from_preset("tiny", fusion_type="concat"))
    assert not any("cross_attention" in n for n in concat)
    assert concat < full  # only the cross-attention sub-layers are gone

    no_cbam = parameter_names(XAttnConfig.from_preset("tiny", use_cbam=False))
    assert not any("cbam" in n for n in no_cbam) and full - no_cbam == {n for n in full if "cbam" in n}

    image_only = parameter_names(XAttnConfig.from_preset("tiny", modalities="image"))
    assert not any(n.startswith("xattn.text_model.") or "text_block" in n for n in image_only)
    assert not any("cross_attention" in n for n in image_only)

    text_only = parameter_names(XAttnConfig.from_preset("tiny", modalities="text"))
    assert not any(n.startswith("xattn.vision_model.") or "image_block" in n for n in text_only)

    no_self = parameter_names(XAttnConfig.from_preset("tiny", fusion_self_attention=False))
    assert not any("self_attention" in n for n in no_self)


@pytest.mark.parametrize("overrides", [dict(fusion_type="concat"), dict(use_cbam=False), dict(modalities="image"),
                                       dict(modalities="text")])
def test_ablations_run_every_head_they_support(overrides):
    config = XAttnConfig.from_preset("tiny", **overrides)
    model = build(XAttnForMultiTask, config).train()
    batch = make_batch(config)
    captions = dict(caption_input_ids=batch["input_ids"], caption_attention_mask=batch["attention_mask"])
    out = model(**batch, labels=torch.tensor([0, 1, 2]), **captions)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    if config.modalities != "both":
        assert out.loss_cl is None  # retrieval needs both towers
    if config.modalities == "text":
        assert out.loss_seq is None  # nothing to caption


def test_retrieval_head_needs_both_towers():
    with pytest.raises(ValueError, match="modalities"):
        XAttnForImageTextRetrieval(XAttnConfig.from_preset("tiny", modalities="image"))


def test_cbam_matches_woo_et_al():
    torch.manual_seed(0)
    cbam = XAttnCBAM(8, reduction=2, kernel_size=3)
    x = torch.randn(2, 8, 5, 5)
    out, spatial = cbam(x)

    def mlp(v):
        return cbam.channel_mlp[2](torch.relu(cbam.channel_mlp[0](v)))

    channel = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    refined = x * channel
    pooled = torch.cat([refined.mean(1, keepdim=True), refined.amax(1, keepdim=True)], 1)
    expected_spatial = torch.sigmoid(torch.nn.functional.conv2d(pooled, cbam.spatial_conv.weight, padding=1))
    torch.testing.assert_close(spatial, expected_spatial)
    torch.testing.assert_close(out, refined * expected_spatial)


def test_shared_image_ids_are_never_negatives():
    config = XAttnConfig.from_preset("tiny", contrastive_margin=2.0)  # every negative inside the margin
    model = build(XAttnForImageTextRetrieval, config)
    batch = make_batch(config)
    with torch.no_grad():
        same = model(**batch, labels=torch.tensor([7, 7, 7]))
        distinct = model(**batch, return_loss=True)
    # no negatives: every pair matches (y = 1), so Formula 2 is the mean distance over all B x B pairs
    distance = -same.logits_per_image
    torch.testing.assert_close(same.loss_contrastive, distance.mean(), rtol=1e-4, atol=1e-5)
    assert not torch.isclose(same.loss_contrastive, distinct.loss_contrastive)


def test_infonce_option(tiny_config):
    config = XAttnConfig.from_preset("tiny", contrastive_loss="infonce")
    model = build(XAttnForImageTextRetrieval, config)
    with torch.no_grad():
        out = model(**make_batch(config), return_loss=True)
    logits = out.image_embeds @ out.text_embeds.T / config.contrastive_temperature
    targets = torch.arange(3)
    expected = (torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets)) / 2
    torch.testing.assert_close(out.loss_contrastive, expected)


def test_itm_score_reuses_an_encoded_image(tiny_config):
    model = build(XAttnForImageTextRetrieval, tiny_config)
    batch = make_batch(tiny_config)
    with torch.no_grad():
        direct = model.itm_score(batch["input_ids"], batch["attention_mask"], pixel_values=batch["pixel_values"])
        image_tokens, _ = model.xattn.encode_image(batch["pixel_values"])
        reused = model.itm_score(batch["input_ids"], batch["attention_mask"], image_hidden_states=image_tokens)
        embeds = model.get_image_features(image_hidden_states=image_tokens)
        assert torch.equal(embeds, model.get_image_features(batch["pixel_values"]))
    torch.testing.assert_close(direct, reused)
    assert ((direct > 0) & (direct < 1)).all()


def test_vqa_soft_scores(tiny_config):
    config = XAttnConfig.from_preset("tiny", num_labels=5, problem_type="multi_label_classification")
    model = build(XAttnForSequenceClassification, config)
    scores = torch.tensor([[1.0, 0.3, 0, 0, 0], [0, 0, 0.6, 0, 0], [0, 0, 0, 0, 1.0]])
    with torch.no_grad():
        out = model(**make_batch(config), labels=scores)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, scores, reduction="sum") / 3
    torch.testing.assert_close(out.loss, expected)


def test_memory_saving_mode_gives_same_loss_and_gradients(tiny_config):
    """DenseNet memory_efficient + activation checkpointing of ALBERT, fusion and decoder: same numbers, and each
    checkpointed part really is recomputed in the backward pass."""
    config = XAttnConfig.from_preset("tiny", hidden_dropout_prob=0.0, attention_dropout_prob=0.0,
                                     classifier_dropout=0.0, text_config={"hidden_dropout_prob": 0.0,
                                     "attention_probs_dropout_prob": 0.0}, decoder_config={"hidden_dropout_prob": 0.0,
                                     "attention_probs_dropout_prob": 0.0})
    batch = make_batch(config)
    results = []
    for saving in (False, True):
        model = build(XAttnForMultiTask, config).train()
        model.set_memory_saving(saving)
        calls = {"albert": 0, "fusion": 0}
        # pre-hooks: a recompute stops as soon as it has what the backward needs, before forward hooks would run
        hooks = [model.xattn.text_model.encoder.albert_layer_groups[0].albert_layers[0].register_forward_pre_hook(
                     lambda *a: calls.__setitem__("albert", calls["albert"] + 1)),
                 model.xattn.layers[0].register_forward_pre_hook(
                     lambda *a: calls.__setitem__("fusion", calls["fusion"] + 1))]
        out = run_head(model, batch)
        forward_calls = dict(calls)
        out.loss.backward()
        recomputed = {name: calls[name] - forward_calls[name] for name in calls}
        for hook in hooks:
            hook.remove()
        if saving:
            assert model.xattn.gradient_checkpointing and model.config.memory_efficient
            assert recomputed["albert"] > 0 and recomputed["fusion"] > 0
            assert all(layer.memory_efficient for layer in model.modules()
                       if isinstance(layer, torchvision.models.densenet._DenseLayer))
        else:
            assert recomputed["albert"] == recomputed["fusion"] == 0
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_wrong_image_size_is_a_clear_error(tiny_config):
    model = build(XAttnModel, tiny_config)
    batch = make_batch(tiny_config)
    batch["pixel_values"] = torch.randn(3, 3, 128, 128)
    with pytest.raises(ValueError, match="pixel_values"):
        model(**batch)


def test_pretrained_backbones_from_local_paths(tmp_path):
    config = XAttnConfig.from_preset("tiny")
    torch.manual_seed(1)
    albert = AlbertModel(AlbertConfig(**config.text_config.to_dict()), add_pooling_layer=False)
    albert.save_pretrained(tmp_path / "albert")
    densenet = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2)
    save_file(densenet.state_dict(), str(tmp_path / "densenet.safetensors"))

    model = from_pretrained_backbones(XAttnForMultiTask, config, text=str(tmp_path / "albert"),
                                      vision=str(tmp_path / "densenet.safetensors"))
    for name, value in albert.state_dict().items():
        assert torch.equal(model.xattn.text_model.state_dict()[name], value), name
    for name, value in densenet.features.state_dict().items():
        assert torch.equal(model.xattn.vision_model.features.state_dict()[name], value), name
    with pytest.raises(ValueError, match="safetensors"):
        from_pretrained_backbones(XAttnModel, config, vision=str(tmp_path / "weights.pt"))
