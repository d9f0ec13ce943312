"""Processor of the cross-attention fusion model: an image processor (transformers' `BlipImageProcessor` configured with
ImageNet normalisation, 224 px by default) and an ALBERT tokenizer, merged into one `BatchFeature`.

albert-base-v2's SentencePiece vocabulary comes from the Hub (`XAttnProcessor.build(tokenizer="albert/albert-base-v2")`).
Where the Hub cannot be reached, `train_albert_tokenizer` trains an ALBERT-compatible Unigram tokenizer (same
normalisation, pre-tokenisation and special tokens: `<pad>`=0, `<unk>`=1, `[CLS]`=2, `[SEP]`=3, `[MASK]`=4) on a corpus
with the `tokenizers` library; the processor saves and loads either one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageOps
from transformers import AlbertTokenizer, AutoTokenizer, BatchFeature, BlipImageProcessor, ProcessorMixin

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
ALBERT_SPECIAL_TOKENS = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: EXIF orientation applied, transparency composited on white, 16/32-bit and float
    grey levels rescaled to 0-255 (not clipped), CMYK/P/L/LA converted."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"images must be PIL images, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16"):
            array = array / 65535.0
        else:  # 32-bit int or float: stretch the image's own range
            low, high = float(array.min()), float(array.max())
            array = (array - low) / (high - low) if high > low else np.zeros_like(array)
        image = Image.fromarray(np.round(array * 255.0).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def make_image_processor(image_size: int = 224) -> BlipImageProcessor:
    """Resize to `image_size` squared (bicubic), rescale to [0, 1], normalise with ImageNet's mean/std (DenseNet's)."""
    return BlipImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )


def train_albert_tokenizer(texts: Iterable[str], vocab_size: int | None = 1000, min_word_count: int = 1) -> AlbertTokenizer:
    """Train an ALBERT-compatible Unigram tokenizer on `texts`, deterministically.

    The pipeline is `AlbertTokenizer`'s own (the `tokenizers` normaliser: lower-casing, accent stripping; whitespace +
    metaspace pre-tokenisation; the `[CLS] ... [SEP]` template); the special tokens keep ALBERT's ids 0-4. The
    vocabulary is a unigram language model over whole words: every character seen (so nothing is unknown), then the
    most frequent words (`"▁word"`, ties broken alphabetically) seen at least `min_word_count` times, up to
    `vocab_size` pieces in all (None: no cap), each scored by its log-frequency. Captioning vocabularies are built
    this way (every word seen at least 5 times, Karpathy's splits): `vocab_size=None, min_word_count=5`.
    Unlike `tokenizers`' EM trainer, whose result changes from run to run, the same corpus always gives the same
    tokenizer, so separate processes and resumed runs agree.
    """
    backend = AlbertTokenizer().backend_tokenizer
    words, chars = Counter(), Counter()
    for text in texts:
        normalised = backend.normalizer.normalize_str(text)
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalised):
            words[piece] += 1
            chars.update(piece)
    total = sum(words.values()) + sum(chars.values())
    vocab = [(token, 0.0) for token in ALBERT_SPECIAL_TOKENS]
    for char, count in sorted(chars.items(), key=lambda item: (-item[1], item[0])):
        vocab.append((char, math.log(count / total) - 10.0))  # characters: a costly fallback
    room = len(words) if vocab_size is None else max(vocab_size - len(vocab), 0)
    frequent = [(word, count) for word, count in words.items() if count >= min_word_count]
    for word, count in sorted(frequent, key=lambda item: (-item[1], item[0]))[:room]:
        if len(word) > 1 and word not in chars:
            vocab.append((word, math.log(count / total)))
    return AlbertTokenizer(vocab=vocab)


class XAttnProcessor(ProcessorMixin):
    r"""Prepares images and texts for the XAttn models.

    Args:
        image_processor (`BlipImageProcessor`): resizes and normalises images (see `make_image_processor`).
        tokenizer (`AlbertTokenizer` or any ALBERT-compatible tokenizer).
        max_length (`int`, defaults to 64): texts (statements, questions, prompts) are truncated to this many tokens.
        max_caption_length (`int`, defaults to 40): captions (`captions=`) are truncated to this many tokens.
    """

    def __init__(self, image_processor, tokenizer, max_length: int = 64, max_caption_length: int = 40):
        self.max_length = max_length
        self.max_caption_length = max_caption_length
        super().__init__(image_processor, tokenizer)

    @classmethod
    def build(cls, tokenizer="albert/albert-base-v2", image_size: int = 224, **kwargs) -> "XAttnProcessor":
        """A processor from a tokenizer object, a local folder, or a Hub id (default: albert-base-v2's, which
        needs the Hub)."""
        if isinstance(tokenizer, str):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        return cls(make_image_processor(image_size), tokenizer, **kwargs)

    def __call__(self, images=None, text=None, captions=None, return_tensors="pt", padding=True, **kwargs):
        """Returns a `BatchFeature` with `pixel_values` (images), `input_ids`/`attention_mask` (text: statement,
        question or prompt) and `caption_input_ids`/`caption_attention_mask` (captions, the decoder's targets).
        A single image or string is treated as a batch of one."""
        if images is None and text is None and captions is None:
            raise ValueError("XAttnProcessor needs at least one of images=, text= or captions=")
        data = {}
        if images is not None:
            images = [images] if isinstance(images, Image.Image) else list(images)
            pixel = self.image_processor([to_rgb(image) for image in images], return_tensors=return_tensors)
            data["pixel_values"] = pixel["pixel_values"]
        for key, value, limit in (("", text, self.max_length), ("caption_", captions, self.max_caption_length)):
            if value is None:
                continue
            if isinstance(value, str):
                value = [value]
            encoded = self.tokenizer(
                list(value), padding=padding, truncation=True, max_length=kwargs.get("max_length", limit),
                return_tensors=return_tensors, return_token_type_ids=False,
            )
            data[f"{key}input_ids"] = encoded["input_ids"]
            data[f"{key}attention_mask"] = encoded["attention_mask"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self):
        return ["pixel_values", "input_ids", "attention_mask"]


XAttnProcessor.register_for_auto_class()

__all__ = ["XAttnProcessor", "to_rgb", "make_image_processor", "train_albert_tokenizer"]
