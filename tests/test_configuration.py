import pytest

from modeling_xattn import PRESETS, XAttnConfig, XAttnForMultiTask


def test_defaults_are_the_papers_sizes():
    config = XAttnConfig()
    assert (config.growth_rate, config.block_config, config.num_init_features) == (32, (6, 12, 24, 16), 64)
    assert config.image_size == 224 and config.grid_size == 7 and config.use_cbam
    assert (config.cbam_reduction, config.cbam_kernel_size) == (16, 7)
    text = config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (768, 12, 12)
    assert (text.embedding_size, text.intermediate_size, text.vocab_size) == (128, 3072, 30000)
    assert config.hidden_size == 768 and config.fusion_type == "cross_attention" and config.modalities == "both"
    assert config.num_labels == 3 and config.id2label[0] == "positive"
    assert config.decoder_config.vocab_size == 30000 and config.decoder_config.is_decoder


def test_presets_and_overrides():
    assert set(PRESETS) >= {"tiny", "base"}
    tiny = XAttnForMultiTask(XAttnConfig.from_preset("tiny"))
    assert sum(p.numel() for p in tiny.parameters()) < 1_000_000
    concat = XAttnConfig.from_preset("tiny", fusion_type="concat")
    assert concat.fusion_type == "concat" and concat.hidden_size == 32
    merged = XAttnConfig.from_preset("tiny", text_config={"vocab_size": 500})
    assert merged.text_config.vocab_size == 500 and merged.text_config.hidden_size == 32
    assert merged.decoder_config.vocab_size == 500
    assert XAttnConfig.from_preset("base").to_dict() == XAttnConfig().to_dict()


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(hidden_size=30), "hidden_size"),
        (dict(fusion_type="sum"), "fusion_type"),
        (dict(modalities="audio"), "modalities"),
        (dict(contrastive_loss="triplet"), "contrastive_loss"),
        (dict(contrastive_distance="manhattan"), "contrastive_distance"),
        (dict(cbam_kernel_size=4), "cbam_kernel_size"),
        (dict(block_config=()), "block_config"),
        (dict(image_size=8, block_config=(1, 1, 1, 1)), "image_size"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(lambda_cl=-1.0), "lambda_cl"),
        (dict(bos_token_id=5000), "bos_token_id"),
        (dict(max_caption_length=1000), "max_caption_length"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        XAttnConfig.from_preset("tiny", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        XAttnConfig.from_preset("huge")


def test_save_load_round_trip(tmp_path):
    config = XAttnConfig.from_preset("tiny", fusion_type="concat", use_cbam=False, modalities="image")
    config.save_pretrained(tmp_path)
    loaded = XAttnConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.block_config == (2, 2) and loaded.text_config.hidden_size == 32
