import pytest
import torch
from conftest import make_batch, slow

from modeling_xattn import XAttnConfig, XAttnForConditionalGeneration, XAttnForMultiTask


@pytest.fixture
def captioner(tiny_config):
    torch.manual_seed(0)
    return XAttnForConditionalGeneration(tiny_config).eval()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cache_and_no_cache_give_identical_captions(captioner, tiny_config, num_beams):
    pixels = make_batch(tiny_config, batch_size=2)["pixel_values"]
    cached = captioner.generate(pixels, num_beams=num_beams, max_new_tokens=12, use_cache=True)
    uncached = captioner.generate(pixels, num_beams=num_beams, max_new_tokens=12, use_cache=False)
    assert torch.equal(cached, uncached)
    assert cached.shape[0] == 2 and cached.shape[1] <= 13
    assert (cached[:, 0] == tiny_config.bos_token_id).all()


@pytest.mark.parametrize("num_beams", [1, 3])
def test_static_cache_gives_the_tokens_of_the_dynamic_cache_and_of_none(captioner, tiny_config, num_beams):
    """fp32 on the CPU, every caption forced to its full length (a random model would often stop at once)."""
    pixels = make_batch(tiny_config, batch_size=3)["pixel_values"]
    options = dict(num_beams=num_beams, max_new_tokens=10, min_new_tokens=10)
    dynamic = captioner.generate(pixels, **options)
    static = captioner.generate(pixels, cache_implementation="static", **options)
    uncached = captioner.generate(pixels, use_cache=False, **options)
    assert dynamic.shape == (3, 11) and torch.equal(static, dynamic) and torch.equal(static, uncached)
    assert captioner.generation_config.cache_implementation is None  # the call's setting did not stick


@slow
def test_static_cache_with_a_prompt_and_a_compiled_decoding_step(tiny_config):
    """A VQA-style prompt (padded) makes the memory longer; the compiled step is transformers' own (here forced onto
    the CPU with a light backend; on a GPU it compiles by itself, with CUDA graphs)."""
    from transformers import CompileConfig

    torch.manual_seed(1)
    model = XAttnForMultiTask(tiny_config).eval()
    batch = make_batch(tiny_config, batch_size=2, pad_last=2)
    inputs = dict(pixel_values=batch["pixel_values"], input_ids=batch["input_ids"],
                  attention_mask=batch["attention_mask"], max_new_tokens=8, min_new_tokens=8)
    dynamic = model.generate(**inputs)
    assert torch.equal(model.generate(**inputs, cache_implementation="static"), dynamic)
    compile_config = CompileConfig(backend="aot_eager")
    compile_config._compile_all_devices = True  # transformers compiles on accelerators only, unless told
    compiled = model.generate(**inputs, cache_implementation="static", compile_config=compile_config)
    assert torch.equal(compiled, dynamic)
    assert hasattr(model.captioner.text_decoder, "_compiled_call")  # the decoding step did run compiled
    with pytest.raises(ValueError, match="'dynamic' \\(default\\) or 'static'"):
        model.generate(**inputs, cache_implementation="offloaded")


def test_beam_search_returns_several_sequences(captioner, tiny_config):
    pixels = make_batch(tiny_config, batch_size=2)["pixel_values"]
    out = captioner.generate(pixels, num_beams=3, num_return_sequences=3, max_new_tokens=6,
                             return_dict_in_generate=True, output_scores=True)
    assert out.sequences.shape[0] == 6
    assert out.sequences_scores.shape == (6,)
    # beams of one image are returned best first
    assert (out.sequences_scores.view(2, 3).diff(dim=1) <= 1e-6).all()


def test_greedy_generate_matches_step_by_step_argmax(captioner, tiny_config):
    pixels = make_batch(tiny_config, batch_size=1)["pixel_values"]
    generated = captioner.generate(pixels, max_new_tokens=5, min_new_tokens=5)
    tokens = generated[:, :1]
    with torch.no_grad():
        for _ in range(5):
            logits = captioner(pixel_values=pixels, decoder_input_ids=tokens).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    # min_new_tokens forbids EOS early; the step-by-step loop has no such rule, so compare up to the first EOS
    stop = (tokens[0] == tiny_config.eos_token_id).nonzero()
    end = int(stop[0]) if len(stop) else tokens.shape[1]
    assert torch.equal(generated[0, :end], tokens[0, :end])


def test_decoder_is_causal(captioner, tiny_config):
    batch = make_batch(tiny_config, batch_size=1, text_length=8)
    caption = batch["input_ids"]
    changed = caption.clone()
    changed[0, 5] = (caption[0, 5] + 1) % tiny_config.text_config.vocab_size
    with torch.no_grad():
        first = captioner(pixel_values=batch["pixel_values"], decoder_input_ids=caption).logits
        second = captioner(pixel_values=batch["pixel_values"], decoder_input_ids=changed).logits
    torch.testing.assert_close(first[:, :5], second[:, :5])  # no position before 5 sees token 5
    assert not torch.allclose(first[:, 5:], second[:, 5:])


def test_caption_never_enters_the_encoder(captioner, tiny_config):
    batch = make_batch(tiny_config, batch_size=2)
    other = make_batch(tiny_config, batch_size=2, seed=1)["input_ids"]
    with torch.no_grad():
        a = captioner(pixel_values=batch["pixel_values"], decoder_input_ids=batch["input_ids"])
        b = captioner(pixel_values=batch["pixel_values"], decoder_input_ids=other)
        prompted = captioner(pixel_values=batch["pixel_values"], input_ids=other, decoder_input_ids=other)
    assert torch.equal(a.encoder_hidden_states, b.encoder_hidden_states)
    assert prompted.encoder_hidden_states.shape[1] != a.encoder_hidden_states.shape[1]  # a prompt is encoder input


def test_caption_loss_ignores_padding(captioner, tiny_config):
    batch = make_batch(tiny_config, batch_size=2, text_length=8, pad_last=3)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        out = captioner(pixel_values=batch["pixel_values"], labels=labels)
        logits = out.logits[:, :-1].reshape(-1, tiny_config.text_config.vocab_size)
        expected = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)


def test_multitask_model_generates_with_the_same_encoder(tiny_config, tmp_path):
    torch.manual_seed(0)
    multi = XAttnForMultiTask(tiny_config).eval()
    multi.save_pretrained(tmp_path)
    single = XAttnForConditionalGeneration.from_pretrained(tmp_path).eval()
    pixels = make_batch(tiny_config, batch_size=2)["pixel_values"]
    assert torch.equal(multi.generate(pixels, max_new_tokens=6), single.generate(pixels, max_new_tokens=6))


def test_image_only_model_captions():
    """The visual-features-only ablation captions from the image stream alone: generate's tokens are the decoder's
    own greedy choices, step by step, for each image."""
    config = XAttnConfig.from_preset("tiny", modalities="image")
    torch.manual_seed(0)
    model = XAttnForConditionalGeneration(config).eval()
    pixels = make_batch(config, batch_size=2)["pixel_values"]
    out = model.generate(pixels, max_new_tokens=4, min_new_tokens=4, num_beams=1)
    assert out.shape == (2, 5) and (out[:, 0] == config.bos_token_id).all()
    tokens = out[:, :1]
    with torch.no_grad():
        for _ in range(4):
            logits = model(pixel_values=pixels, decoder_input_ids=tokens).logits
            tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    for row in range(2):  # compared up to the first EOS, which min_new_tokens forbids in generate
        stop = (tokens[row] == config.eos_token_id).nonzero()
        end = int(stop[0]) if len(stop) else tokens.shape[1]
        assert torch.equal(out[row, :end], tokens[row, :end])


def test_generate_starts_from_the_models_generation_config(captioner, tiny_config, tmp_path):
    pixels = make_batch(tiny_config, batch_size=2)["pixel_values"]
    assert captioner.generation_config.max_new_tokens == tiny_config.max_caption_length  # the default length
    captioner.generation_config.num_beams = 3
    captioner.generation_config.max_new_tokens = 2
    configured = captioner.generate(pixels)
    assert configured.shape[1] <= 3  # [CLS] + 2 new tokens
    assert torch.equal(configured, captioner.generate(pixels, generation_config=captioner.generation_config))
    explicit = captioner.generate(pixels, num_beams=3, max_new_tokens=2)
    assert torch.equal(configured, explicit)
    longer = captioner.generate(pixels, max_new_tokens=5, min_new_tokens=5)  # call-time arguments override
    assert longer.shape[1] == 6 and torch.equal(longer, captioner.generate(pixels, num_beams=3, max_new_tokens=5,
                                                                           min_new_tokens=5))
    assert captioner.generation_config.max_new_tokens == 2  # overriding did not change the model's config

    captioner.save_pretrained(tmp_path)  # saved as generation_config.json and used after loading
    assert '"num_beams": 3' in (tmp_path / "generation_config.json").read_text()
    reloaded = XAttnForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.generation_config.num_beams == 3 and reloaded.generation_config.max_new_tokens == 2
    assert torch.equal(reloaded.generate(pixels), configured)


def test_a_folder_saved_without_generation_lengths_captions_as_long_as_trained(captioner, tiny_config, tmp_path):
    import json

    captioner.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    saved.pop("max_new_tokens")  # as folders written before generation_config.json carried a length
    (tmp_path / "generation_config.json").write_text(json.dumps(saved))
    reloaded = XAttnForConditionalGeneration.from_pretrained(tmp_path)
    assert reloaded.generation_config.max_new_tokens == tiny_config.max_caption_length
