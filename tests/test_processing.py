import io

import numpy as np
import pytest
import torch
from conftest import CORPUS, SHARED_SAMPLE
from PIL import Image

from modeling_xattn import XAttnConfig, XAttnForMultiTask, XAttnProcessor, to_rgb, train_albert_tokenizer

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def pixel_of(processor, image):
    """The processed pixel values mapped back to 0-255 RGB."""
    values = processor(images=image)["pixel_values"][0]
    return (values * IMAGENET_STD + IMAGENET_MEAN) * 255


def test_tokenizer_is_albert_compatible(tokenizer):
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    ids = tokenizer("A red circle")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a red circle"
    assert type(tokenizer).__name__ == "AlbertTokenizer"
    bigger = train_albert_tokenizer(CORPUS, vocab_size=200)
    assert len(bigger) > len(train_albert_tokenizer(CORPUS, vocab_size=60))


def test_trained_tokenizer_keeps_the_words_seen_often_whole():
    corpus = ["a dog runs on the grass"] * 5 + ["a dog sleeps"] * 4
    by_count = train_albert_tokenizer(corpus, vocab_size=None, min_word_count=5)
    pieces = by_count.tokenize("a dog runs sleeps")
    assert pieces[:3] == ["▁a", "▁dog", "▁runs"] and "▁sleeps" not in pieces  # seen 4 times: spelled in pieces
    assert by_count.decode(by_count("a dog sleeps")["input_ids"], skip_special_tokens=True) == "a dog sleeps"
    assert "▁sleeps" in train_albert_tokenizer(corpus, vocab_size=None, min_word_count=4).tokenize("sleeps")
    # on the embedded dataset every word is frequent: the default is the tokenizer a 1,000-piece cap gave
    from modeling_xattn.training.data.synthetic import synthetic_dataset

    rows = synthetic_dataset(200, seed=0)
    texts = list(rows["text"]) + [c for captions in rows["captions"] for c in captions]
    assert (train_albert_tokenizer(texts, vocab_size=None, min_word_count=5).get_vocab()
            == train_albert_tokenizer(texts, vocab_size=1000).get_vocab())


def test_train_py_trains_the_default_tokenizer_by_word_count():
    from modeling_xattn.training.main import parse_args

    args = parse_args([])
    assert args.vocab_size is None and args.min_word_count == 5


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "L", "LA", "P", "I;16", "I", "F"])
def test_every_pil_mode_becomes_rgb(processor, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode not in ("I;16", "I", "F") else Image.fromarray(
        np.random.default_rng(0).integers(0, 60000, (40, 50)).astype({"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    assert image.mode == mode
    converted = to_rgb(image)
    assert converted.mode == "RGB" and converted.size == (50, 40)
    out = processor(images=image)
    assert out["pixel_values"].shape == (1, 3, 64, 64)


def test_sixteen_bit_is_rescaled_not_clipped():
    levels = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    converted = np.asarray(to_rgb(Image.fromarray(levels)))
    assert converted[0, :, 0].tolist() == [0, 64, 128, 255]
    assert (converted[..., 0] == converted[..., 2]).all()


def test_transparency_is_composited_on_white(processor):
    clear = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    assert np.asarray(to_rgb(clear)).min() == 255
    palette = Image.new("P", (8, 8), 0)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb(palette)).min() == 255
    torch.testing.assert_close(pixel_of(processor, clear), torch.full((3, 64, 64), 255.0), atol=0.5, rtol=0)


def test_cmyk_and_grey_colours(processor):
    red = Image.new("RGB", (16, 16), (255, 0, 0))
    assert np.asarray(to_rgb(red.convert("CMYK")))[0, 0].tolist() == [255, 0, 0]
    assert np.asarray(to_rgb(Image.new("L", (4, 4), 100)))[0, 0].tolist() == [100, 100, 100]


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert to_rgb(Image.open(io.BytesIO(buffer.getvalue()))).size == (10, 30)


def test_text_is_truncated_and_captions_are_separate(processor):
    out = processor(text=["word " * 100, "short"], captions="a caption " * 50)
    assert out["input_ids"].shape[1] == processor.max_length
    assert out["caption_input_ids"].shape == (1, processor.max_caption_length)
    assert out["attention_mask"][1].sum() < processor.max_length
    assert "pixel_values" not in out


def test_neither_images_nor_text_is_a_clear_error(processor):
    with pytest.raises(ValueError, match="images=, text="):
        processor()
    with pytest.raises(TypeError, match="PIL"):
        processor(images=[np.zeros((4, 4, 3))])


def test_processor_save_load_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    loaded = XAttnProcessor.from_pretrained(tmp_path)
    image = Image.new("RGB", (32, 48), (10, 200, 30))
    first = processor(images=[image], text=["the red circle"])
    second = loaded(images=[image], text=["the red circle"])
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert loaded.max_length == processor.max_length


@pytest.mark.skipif(not SHARED_SAMPLE.exists(), reason="shared COCO sample not present (a user's clone has none)")
def test_real_coco_photos(processor):
    paths = sorted(SHARED_SAMPLE.glob("*.jpg"))[:4]
    images = [Image.open(p) for p in paths]
    batch = processor(images=images, text=["a photo"] * 4, captions=["a photo of something"] * 4)
    assert batch["pixel_values"].shape == (4, 3, 64, 64)
    assert batch["pixel_values"].std() > 0.1  # real content, not a constant
    config = XAttnConfig.from_preset("tiny", text_config={"vocab_size": len(processor.tokenizer)})
    model = XAttnForMultiTask(config).eval()
    with torch.no_grad():
        out = model(**batch, labels=torch.tensor([0, 1, 2, 0]))
    assert torch.isfinite(out.loss)
