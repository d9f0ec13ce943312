"""The paper's visualisation analysis: each word's cross-attention over the image regions, per fusion layer (heads
averaged), drawn as heatmaps on the photo, next to CBAM's spatial attention map; one PNG grid.

    tokens, maps, cbam = attention_maps(model, processor, image, "a dog on the beach")
    render(image, tokens, maps, cbam, "attention.png")
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import AutoModel

from modeling_xattn.processing_xattn import to_rgb
from modeling_xattn.training.inference import load_model
from modeling_xattn.training.options import option, parse_options
from modeling_xattn.training.plots import pyplot

SIDE = 224  # pixels of each drawn photo


@torch.no_grad()
def attention_maps(model, processor, image: Image.Image, text: str):
    """Tokens, per-layer word->region maps `(layers, words, grid, grid)` (heads averaged) and CBAM's map, from any
    XAttn model (its fused encoder, `model.xattn`, gives the maps)."""
    inputs = processor(images=image, text=text)
    encoder = getattr(model, "xattn", model)
    output = encoder(**{k: v.to(encoder.device) for k, v in inputs.items()}, output_attentions=True)
    if output.text_to_image_attentions is None:
        raise ValueError("this model has no cross-attention (fusion_type='concat' or a single modality)")
    grid = model.config.grid_size
    maps = torch.stack([layer[0].mean(0).float().cpu() for layer in output.text_to_image_attentions])  # (layers, words, regions)
    maps = maps.reshape(maps.shape[0], maps.shape[1], grid, grid)
    tokens = processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    cbam = output.cbam_spatial_attention[0, 0].float().cpu() if output.cbam_spatial_attention is not None else None
    return tokens, maps, cbam


def heatmap(grid_map: torch.Tensor, side: int = SIDE) -> np.ndarray:
    """A `(grid, grid)` map upsampled (bilinear) to `(side, side)` and scaled to [0, 1]."""
    values = grid_map.float()[None, None]
    values = torch.nn.functional.interpolate(values, size=(side, side), mode="bilinear", align_corners=False)[0, 0]
    values = (values - values.min()) / (values.max() - values.min() + 1e-8)
    return values.numpy()


def overlay(photo: np.ndarray, grid_map: torch.Tensor, alpha: float = 0.55) -> np.ndarray:
    """The photo `(side, side, 3)` uint8 with `grid_map` blended on top in the jet colour map (red = most attended),
    as uint8 RGB."""
    colours = pyplot().get_cmap("jet")(heatmap(grid_map, photo.shape[0]))[..., :3]  # (side, side, 3) in [0, 1]
    blended = (1 - alpha) * photo.astype(np.float64) / 255.0 + alpha * colours
    return np.round(blended * 255.0).astype(np.uint8)


def render(image: Image.Image, tokens, maps, cbam, path: str, max_words: int = 12):
    """One PNG grid: the photo and CBAM's map in the first column, then one column per word and one row per layer."""
    plt = pyplot()
    special = {"[CLS]", "[SEP]", "<pad>"}
    words = [i for i, t in enumerate(tokens) if t not in special][:max_words]
    layers = maps.shape[0]
    photo = np.asarray(image.convert("RGB").resize((SIDE, SIDE)))
    figure, axes = plt.subplots(layers + 1, len(words) + 1, figsize=(1.9 * (len(words) + 1), 1.9 * (layers + 1)),
                                squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    axes[0, 0].imshow(photo)
    axes[0, 0].set_title("image", fontsize=8)
    if cbam is not None:
        axes[1, 0].imshow(overlay(photo, cbam))
        axes[1, 0].set_title("CBAM spatial", fontsize=8)
    for column, index in enumerate(words, start=1):
        axes[0, column].text(0.5, 0.5, tokens[index].lstrip("▁"), ha="center", va="center", fontsize=11)
        for layer in range(layers):
            axes[layer + 1, column].imshow(overlay(photo, maps[layer, index]))
            if column == 1:
                axes[layer + 1, column].set_title(f"layer {layer + 1}", fontsize=8, loc="left")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


@dataclass(kw_only=True)
class VisualizeArguments:
    """The model, the photo and the text whose attention to draw."""

    _argument_group_name = "visualisation"

    model: str = field(metadata={"help": "a saved folder or a Hub id"})
    image: str = field(metadata={"help": "the photo"})
    text: str = field(metadata={"help": "the text whose words' attention is drawn"})
    revision: str | None = option(None, "Hub revision (pin a commit)")
    output: str = option("attention.png")
    max_words: int = option(12, "words (tokens) shown, special tokens excluded")
    device: str | None = option(None, "cuda, cuda:N, mps or cpu (default: CUDA where available, else MPS, else CPU)")


def main(argv=None, description: str | None = None) -> str:
    """Draw the attention maps the command line asks for; returns the PNG's path."""
    (args,) = parse_options((VisualizeArguments,), argv, description or __doc__)
    model, processor = load_model(args.model, args.revision, args.device, auto_class=AutoModel)
    image = to_rgb(Image.open(args.image))
    tokens, maps, cbam = attention_maps(model, processor, image, args.text)
    render(image, tokens, maps, cbam, args.output, args.max_words)
    print(f"wrote {args.output}: {maps.shape[0]} layers x {min(len(tokens) - 2, args.max_words)} words")
    return args.output


__all__ = ["VisualizeArguments", "attention_maps", "heatmap", "main", "overlay", "render"]
