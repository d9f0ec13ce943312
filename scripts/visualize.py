"""The paper's visualisation analysis: each word's cross-attention over the image regions, per fusion layer (heads
averaged), drawn as heatmaps on the photo, next to CBAM's spatial attention map; one PNG grid.

    python scripts/visualize.py --model outputs/xattn --image photo.jpg --text "a dog on the beach" --output attn.png
"""

from __future__ import annotations

import argparse

from PIL import Image
from transformers import AutoModel

from modeling_xattn.processing_xattn import to_rgb
from modeling_xattn.training.apps.visualization import attention_maps, render
from modeling_xattn.training.hub import load_pretrained, load_processor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved folder or a Hub id")
    p.add_argument("--revision")
    p.add_argument("--image", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--output", default="attention.png")
    p.add_argument("--max_words", type=int, default=12, help="words (tokens) shown, special tokens excluded")
    return p.parse_args(argv)


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
