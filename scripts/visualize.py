"""The paper's visualisation analysis: each word's cross-attention over the image regions, per fusion layer (heads
averaged), drawn as heatmaps on the photo, next to CBAM's spatial attention map; one PNG grid.

    python scripts/visualize.py --model outputs/xattn --image photo.jpg --text "a dog on the beach" --output attn.png
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel

from modeling_xattn.training_xattn import pyplot
from modeling_xattn.hub_xattn import load_pretrained, load_processor
from modeling_xattn.processing_xattn import to_rgb


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved folder or a Hub id")
    p.add_argument("--revision")
    p.add_argument("--image", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--output", default="attention.png")
    p.add_argument("--max_words", type=int, default=12, help="words (tokens) shown, special tokens excluded")
    return p.parse_args(argv)


@torch.no_grad()
def attention_maps(model, processor, image: Image.Image, text: str):
    """Tokens, per-layer word->region maps `(layers, words, grid, grid)` (heads averaged) and CBAM's map."""
    inputs = processor(images=image, text=text)
    output = model(**inputs, output_attentions=True)
    if output.text_to_image_attentions is None:
        raise ValueError("this model has no cross-attention (fusion_type='concat' or a single modality)")
    grid = model.config.grid_size
    maps = torch.stack([layer[0].mean(0) for layer in output.text_to_image_attentions])  # (layers, words, regions)
    maps = maps.reshape(maps.shape[0], maps.shape[1], grid, grid)
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    cbam = output.cbam_spatial_attention[0, 0] if output.cbam_spatial_attention is not None else None
    return tokens, maps, cbam


def render(image: Image.Image, tokens, maps, cbam, path: str, max_words: int = 12):
    plt = pyplot()

    special = {"[CLS]", "[SEP]", "<pad>"}
    words = [i for i, t in enumerate(tokens) if t not in special][:max_words]
    layers = maps.shape[0]
    photo = np.asarray(image.resize((224, 224)))
    figure, axes = plt.subplots(layers + 1, len(words) + 1, figsize=(1.9 * (len(words) + 1), 1.9 * (layers + 1)),
                                squeeze=False)
    axes[0, 0].imshow(photo)
    axes[0, 0].set_title("image", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    if cbam is not None:
        axes[1, 0].imshow(photo)
        axes[1, 0].imshow(_upsample(cbam), alpha=0.55, cmap="jet", extent=(0, 224, 224, 0))
        axes[1, 0].set_title("CBAM spatial", fontsize=8)
    for column, index in enumerate(words, start=1):
        axes[0, column].text(0.5, 0.5, tokens[index].lstrip("▁"), ha="center", va="center", fontsize=11)
        for layer in range(layers):
            ax = axes[layer + 1, column]
            ax.imshow(photo)
            ax.imshow(_upsample(maps[layer, index]), alpha=0.55, cmap="jet", extent=(0, 224, 224, 0))
            if column == 1:
                ax.set_title(f"layer {layer + 1}", fontsize=8, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _upsample(grid_map: torch.Tensor) -> np.ndarray:
    values = grid_map.float()[None, None]
    values = torch.nn.functional.interpolate(values, size=(224, 224), mode="bilinear", align_corners=False)[0, 0]
    values = (values - values.min()) / (values.max() - values.min() + 1e-8)
    return values.numpy()


def main(argv=None):
    args = parse_args(argv)
    model = load_pretrained(args.model, args.revision, auto_class=AutoModel).eval()
    processor = load_processor(args.model, args.revision)
    image = to_rgb(Image.open(args.image))
    tokens, maps, cbam = attention_maps(model, processor, image, args.text)
    render(image, tokens, maps, cbam, args.output, args.max_words)
    print(f"wrote {args.output}: {maps.shape[0]} layers x {min(len(tokens) - 2, args.max_words)} words")
    return args.output


if __name__ == "__main__":
    main()
