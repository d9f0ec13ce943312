"""The paper's formulas computed by hand on fixed numbers and compared with the code; fp32 where bf16 rounds badly;
the attention implementation reaching the fusion layers; quiet loading of one head from another's checkpoint."""

import copy
import logging
import math

import pytest
import torch
from conftest import make_batch

from modeling_xattn import (
    XAttnConfig,
    XAttnForConditionalGeneration,
    XAttnForImageTextRetrieval,
    XAttnForMultiTask,
    XAttnForSequenceClassification,
    XAttnModel,
)
from modeling_xattn.modeling_xattn import XAttnClassificationHead, XAttnRetrievalHead, caption_labels
from modeling_xattn.training.optimization import PreviousLossDecay

# Two images and two texts on the unit circle. Pairs (1, 1) and (2, 2) match; (1, 2) and (2, 1) are negatives.
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TEXTS = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
NEGATIVES = ~torch.eye(2, dtype=torch.bool)
# Euclidean distances by hand: D11 = |(0.4, -0.8)|, D12 = |(0, 0)|, D21 = |(-0.6, 0.2)|, D22 = |(-1, 1)|
D11, D12, D21, D22 = math.sqrt(0.8), 0.0, math.sqrt(0.4), math.sqrt(2.0)


def head(**overrides):
    return XAttnRetrievalHead(XAttnConfig.from_preset("tiny", **overrides))


def test_formula_1_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, -100])  # the second row has no label
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0 + math.exp(-1.0)))
    assert XAttnClassificationHead.loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_formula_2_as_written_is_the_default():
    """L = 1/N Σ [y·D + (1−y)·max(0, m − D)], N = 4 pairs, m = 1."""
    expected = (D11 + D22 + max(0.0, 1 - D12) + max(0.0, 1 - D21)) / 4
    assert expected == pytest.approx(0.919046, abs=1e-6)
    retrieval = head()
    assert retrieval.config.contrastive_loss == "margin"
    image, text = IMAGES.clone().requires_grad_(), TEXTS.clone().requires_grad_()
    loss = retrieval.contrastive_loss(image, text, NEGATIVES)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()  # D12 = 0 exactly: the gradient must stay finite
    assert torch.isfinite(image.grad).all() and torch.isfinite(text.grad).all()


def test_formula_2_squared_option():
    expected = (D11**2 + D22**2 + max(0.0, 1 - D12) ** 2 + max(0.0, 1 - D21) ** 2) / 4
    loss = head(contrastive_loss="margin_squared").contrastive_loss(IMAGES, TEXTS, NEGATIVES)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_formula_2_matches_that_are_not_on_the_diagonal_count_as_matches():
    """(1, 2) marked as no negative (same image, or the same caption): y = 1 there, so its distance counts."""
    negatives = torch.tensor([[False, False], [True, False]])
    expected = (D11 + D22 + D12 + max(0.0, 1 - D21)) / 4
    assert head().contrastive_loss(IMAGES, TEXTS, negatives).item() == pytest.approx(expected, abs=1e-6)


def test_infonce_option_by_hand():
    tau = 0.5
    cos = [[0.6, 1.0], [0.8, 0.0]]

    def ce(row, target):
        return -math.log(math.exp(row[target] / tau) / sum(math.exp(v / tau) for v in row))

    columns = [[cos[0][0], cos[1][0]], [cos[0][1], cos[1][1]]]
    expected = (ce(cos[0], 0) + ce(cos[1], 1)) / 4 + (ce(columns[0], 0) + ce(columns[1], 1)) / 4
    loss = head(contrastive_loss="infonce", contrastive_temperature=tau).contrastive_loss(IMAGES, TEXTS, NEGATIVES)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_formula_3_is_the_mean_next_token_cross_entropy(tiny_config):
    torch.manual_seed(0)
    model = XAttnForConditionalGeneration(tiny_config).eval()
    batch = make_batch(tiny_config, batch_size=2, text_length=6, pad_last=2)
    labels = caption_labels(batch["input_ids"], batch["attention_mask"], tiny_config.pad_token_id)
    with torch.no_grad():
        out = model(pixel_values=batch["pixel_values"], decoder_input_ids=batch["input_ids"],
                    decoder_attention_mask=batch["attention_mask"], labels=labels)
    terms = []  # by hand: token t predicts token t + 1; padding targets are skipped
    for row in range(2):
        for t in range(labels.shape[1] - 1):
            target = int(labels[row, t + 1])
            if target != -100:
                terms.append(-torch.log_softmax(out.logits[row, t].double(), -1)[target].item())
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_formula_4_adds_the_matching_loss_as_its_own_weighted_term():
    config = XAttnConfig.from_preset("tiny", lambda_ce=0.5, lambda_cl=2.0, lambda_seq=0.25, lambda_itm=0.0)
    torch.manual_seed(0)
    model = XAttnForMultiTask(config).eval()
    batch = make_batch(config)
    with torch.no_grad():
        out = model(**batch, labels=torch.tensor([0, 1, 2]), caption_input_ids=batch["input_ids"],
                    caption_attention_mask=batch["attention_mask"])
    assert out.loss_itm is not None  # computed and logged, weighted 0
    expected = 0.5 * out.loss_ce + 2.0 * out.loss_cl + 0.25 * out.loss_seq
    torch.testing.assert_close(out.loss, expected)


def test_formula_5_compares_with_the_previous_evaluation():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1e-3)
    decay = PreviousLossDecay(optimizer, beta=0.5)
    lrs = []
    for loss in (1.0, 0.9, 0.95, 0.95, 0.7, 0.8):
        decay.step(loss)
        lrs.append(optimizer.param_groups[0]["lr"])
    # 0.95 >= 0.9: x0.5; 0.95 >= 0.95: x0.5 again (the best so far, 0.9, plays no part); 0.8 >= 0.7: x0.5
    assert lrs == pytest.approx([1e-3, 1e-3, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4])
    assert decay.factor == pytest.approx(0.125)
    resumed = PreviousLossDecay(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3), beta=0.5)
    resumed.load_state_dict(decay.state_dict())
    assert resumed.previous_loss == 0.8 and resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1.25e-4)
    resumed.apply(0.5)  # a schedule's multiple on top: peak x factor x schedule
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.125 * 0.5)


def test_formula_5_resumes_a_checkpoint_that_kept_only_the_rates():
    """Checkpoints written before the factor was kept hold the decayed rates alone: the factor is read back from
    them, and the rates (not an `initial_lr` the old optimiser state lacks) come from the peak."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    resumed = PreviousLossDecay(optimizer, beta=0.5)
    resumed.load_state_dict({"previous_loss": 0.7, "lrs": [2.5e-4]})
    assert resumed.factor == pytest.approx(0.25) and optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)


# --------------------------------------------------------------------------------------------- bf16


def test_distances_and_losses_stay_fp32_under_bf16_autocast():
    retrieval = head()
    angle = math.acos(0.9991)  # bf16 rounds a cosine of 0.9991 to 1.0, i.e. a distance of 0
    image = torch.tensor([[1.0, 0.0]])
    text = torch.tensor([[math.cos(angle), math.sin(angle)]])
    exact = math.sqrt(2 - 2 * 0.9991)
    assert torch.tensor(0.9991).bfloat16().item() == 1.0  # the rounding this guards against
    with torch.autocast("cpu", dtype=torch.bfloat16):
        distance = retrieval.distance(image, text)
        pair = retrieval.pair_distance(image, text)
        loss = retrieval.contrastive_loss(IMAGES, TEXTS, NEGATIVES)
    assert distance.dtype == pair.dtype == loss.dtype == torch.float32
    assert distance.item() == pytest.approx(exact, rel=1e-3) and pair.item() == pytest.approx(exact, rel=1e-4)
    assert loss.item() == pytest.approx(0.919046, abs=1e-5)


def test_model_outputs_under_bf16_autocast_keep_fp32_embeddings_and_losses(tiny_config):
    torch.manual_seed(0)
    model = XAttnForImageTextRetrieval(tiny_config).eval()
    batch = make_batch(tiny_config)
    with torch.no_grad():
        reference = model(**batch, labels=torch.arange(3))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(**batch, labels=torch.arange(3))
    for name in ("image_embeds", "text_embeds", "logits_per_image", "loss_contrastive", "loss_itm"):
        assert getattr(mixed, name).dtype == torch.float32, name
    assert torch.allclose(mixed.image_embeds.norm(dim=-1), torch.ones(3), atol=1e-6)  # normalised in fp32
    torch.testing.assert_close(mixed.logits_per_image, reference.logits_per_image, atol=0.05, rtol=0.05)


# --------------------------------------------------------------------------------------------- attention


def test_eager_and_sdpa_reach_the_fusion_layers(tiny_config):
    torch.manual_seed(0)
    sdpa = XAttnForSequenceClassification(tiny_config).eval()
    eager = XAttnForSequenceClassification._from_config(copy.deepcopy(tiny_config), attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    calls = []
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original = ALL_ATTENTION_FUNCTIONS["sdpa"]
    ALL_ATTENTION_FUNCTIONS["sdpa"] = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        batch = make_batch(tiny_config, pad_last=2)
        with torch.no_grad():
            out_sdpa = sdpa(**batch)
            sdpa_calls = len(calls)
            out_eager = eager(**batch, output_attentions=True)
            eager_calls = len(calls) - sdpa_calls
    finally:
        ALL_ATTENTION_FUNCTIONS["sdpa"] = original
    # 2 fusion layers x 2 streams x (cross + self attention) go through SDPA, plus ALBERT's; none with eager
    assert sdpa_calls >= 8 and eager_calls == 0
    torch.testing.assert_close(out_eager.logits, out_sdpa.logits, atol=1e-5, rtol=1e-4)
    maps = out_eager.text_to_image_attentions
    assert len(maps) == tiny_config.num_fusion_layers and maps[0].shape[-1] == tiny_config.num_image_tokens
    torch.testing.assert_close(maps[0].sum(-1), torch.ones_like(maps[0].sum(-1)))


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flex_attention", "paged|eager", "bogus"])
def test_unsupported_attention_is_refused_naming_the_supported_ones(tiny_config, implementation):
    with pytest.raises(ValueError, match="'eager', 'sdpa'"):
        XAttnModel._from_config(tiny_config, attn_implementation=implementation)


def test_set_attn_implementation_switches_the_fusion_layers(tiny_config):
    model = XAttnModel(tiny_config)
    model.set_attn_implementation("eager")
    assert model.layers[0].text_block.cross_attention.attention.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="'eager', 'sdpa'"):
        model.set_attn_implementation("flash_attention_2")


# --------------------------------------------------------------------------------------------- loading


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def transformers_log():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    handler = _Records()
    loggers = [hf_logging.get_logger(), logging.getLogger("modeling_xattn")]  # transformers' and this package's
    for logger in loggers:
        logger.addHandler(handler)
    yield handler.messages
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.mark.parametrize("source", [XAttnForSequenceClassification, XAttnForConditionalGeneration, XAttnForMultiTask,
                                    XAttnForImageTextRetrieval])
@pytest.mark.parametrize("target", [XAttnModel, XAttnForSequenceClassification, XAttnForConditionalGeneration,
                                    XAttnForMultiTask, XAttnForImageTextRetrieval])
def test_any_head_loads_from_any_other_heads_checkpoint_quietly(source, target, tiny_config, tmp_path,
                                                                  transformers_log):
    torch.manual_seed(0)
    original = source(tiny_config)
    original.save_pretrained(tmp_path)
    transformers_log.clear()
    loaded = target.from_pretrained(tmp_path)
    text = "\n".join(transformers_log)
    assert "MISSING" not in text and "UNEXPECTED" not in text and "corrupted" not in text, text
    expected_absent = {"classifier", "retrieval", "captioner"} & {name for name, _ in loaded.named_children()}
    expected_absent -= {name for name, _ in original.named_children()}
    if expected_absent:  # one line, naming the heads that start untrained
        assert len(transformers_log) == 1 and all(name in text for name in expected_absent), text
    else:
        assert transformers_log == [], text
    shared = loaded.base_model.state_dict()
    for key, value in original.base_model.state_dict().items():
        torch.testing.assert_close(shared[key], value, msg=key)
    if isinstance(loaded, (XAttnForConditionalGeneration, XAttnForMultiTask)):  # the decoder's output stays tied
        decoder = loaded.captioner.text_decoder
        assert decoder.cls.predictions.decoder.weight is decoder.bert.embeddings.word_embeddings.weight
        assert torch.isfinite(decoder.cls.predictions.decoder.weight).all()


def test_a_truly_missing_weight_still_warns(tiny_config, tmp_path, transformers_log):
    from safetensors.torch import load_file, save_file

    XAttnForSequenceClassification(tiny_config).save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["xattn.fusion_projection.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    transformers_log.clear()
    XAttnForSequenceClassification.from_pretrained(tmp_path)
    text = "\n".join(transformers_log)
    assert "xattn.fusion_projection.weight" in text and "MISSING" in text


def test_a_head_its_training_weighted_zero_is_named_on_loading(tmp_path, transformers_log):
    config = XAttnConfig.from_preset("tiny", lambda_ce=0.0)  # as train.py saves a captions-only run
    XAttnForMultiTask(config).save_pretrained(tmp_path)
    transformers_log.clear()
    XAttnForSequenceClassification.from_pretrained(tmp_path)
    assert len(transformers_log) == 1 and "classifier" in transformers_log[0] and "weight of 0" in transformers_log[0]
    transformers_log.clear()
    XAttnForConditionalGeneration.from_pretrained(tmp_path)  # the captioner was trained: nothing to say
    assert transformers_log == []
