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
from modeling_xattn.training.data.options import data_options
from modeling_xattn.training.data.schema import clean_text, load_image
from modeling_xattn.training.data.sources import load_split
from modeling_xattn.training.diagnostic import pointing_hits, subject_tokens
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


def render_pointing(model, processor, rows, path: str, grid: int = 3) -> list[list[bool]]:
    """The pointing game drawn on diagnostic scenes (`--dataset relations` rows): one row per scene, the scene with
    the question's subject outlined, then per fusion layer the attention of the subject's colour word over the
    regions (heads and the word's tokens averaged), its peak marked with a cross (white: in the subject's cell, a hit;
    black: a miss). Returns the hits, scene by scene and layer by layer."""
    plt = pyplot()
    layers = model.config.num_fusion_layers
    figure, axes = plt.subplots(len(rows), layers + 1, figsize=(2.3 * (layers + 1), 2.5 * len(rows)), squeeze=False)
    found = []
    for number, row in enumerate(rows):
        image = to_rgb(load_image(row["image"]))
        question = clean_text(row["question"])
        tokens, maps, _ = attention_maps(model, processor, image, question)
        encoded = processor.tokenizer(question)["input_ids"]
        words = subject_tokens(processor.tokenizer, question, row["subject_span"], encoded)
        cell, side = row["object_cells"][row["subject"]], maps.shape[-1]
        photo = np.asarray(image.resize((SIDE, SIDE)))
        step = SIDE / grid
        row_of, column_of = divmod(cell, grid)
        axes[number, 0].imshow(photo)
        axes[number, 0].add_patch(plt.Rectangle((column_of * step, row_of * step), step, step, fill=False,
                                                      edgecolor="white", linewidth=2))
        axes[number, 0].set_title(f"{question}\n→ {row['answers'][0]}", fontsize=7)
        hits = pointing_hits([m.reshape(1, m.shape[0], -1) for m in maps], words, cell, grid) if words else []
        found.append(hits)
        for layer in range(layers):
            ax = axes[number, layer + 1]
            word_map = maps[layer, words].mean(0) if words else maps[layer].mean(0)
            ax.imshow(overlay(photo, word_map))
            peak = int(word_map.argmax())
            y, x = divmod(peak, side)
            hit = bool(hits and hits[layer])
            ax.plot((x + 0.5) * SIDE / side, (y + 0.5) * SIDE / side, marker="x", markersize=10, mew=3,
                    color="white" if hit else "black")
            ax.set_title(f"layer {layer + 1}: {'hit' if hit else 'miss'}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return found


@dataclass(kw_only=True)
class VisualizeArguments:
    """The model, the photo and the text whose attention to draw."""

    _argument_group_name = "visualisation"

    model: str = field(metadata={"help": "a saved folder or a Hub id"})
    image: str | None = option(None, "the photo")
    text: str | None = option(None, "the text whose words' attention is drawn")
    relations: int = option(
        0,
        "instead of --image/--text: the pointing game on this many scenes of the relational diagnostic's test split "
        "(--dataset relations, data seed 0): each question's subject word, layer by layer")
    revision: str | None = option(None, "Hub revision (pin a commit)")
    output: str = option("attention.png")
    max_words: int = option(12, "words (tokens) shown, special tokens excluded")
    device: str | None = option(None, "cuda, cuda:N, mps or cpu (default: CUDA where available, else MPS, else CPU)")


def main(argv=None, description: str | None = None) -> str:
    """Draw the attention maps the command line asks for; returns the PNG's path."""
    (args,) = parse_options((VisualizeArguments,), argv, description or __doc__)
    if args.relations < 0 or (args.relations == 0) == (args.image is None or args.text is None):
        raise SystemExit("give --image and --text, or --relations N (a positive number of diagnostic scenes)")
    model, processor = load_model(args.model, args.revision, args.device, auto_class=AutoModel)
    if args.relations:
        rows = load_split(data_options(dataset="relations", synthetic_test_samples=args.relations), "test")
        hits = render_pointing(model, processor, [rows[i] for i in range(args.relations)], args.output)
        print(f"wrote {args.output}: the pointing game on {args.relations} diagnostic scenes; hits per layer: "
              + ", ".join(f"layer {layer + 1} {sum(h[layer] for h in hits if h)}/{len(hits)}"
                          for layer in range(model.config.num_fusion_layers)))
        return args.output
    image = to_rgb(Image.open(args.image))
    tokens, maps, cbam = attention_maps(model, processor, image, args.text)
    render(image, tokens, maps, cbam, args.output, args.max_words)
    print(f"wrote {args.output}: {maps.shape[0]} layers x {min(len(tokens) - 2, args.max_words)} words")
    return args.output


__all__ = ["VisualizeArguments", "attention_maps", "heatmap", "main", "overlay", "render", "render_pointing"]
