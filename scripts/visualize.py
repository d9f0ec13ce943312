"""The paper's visualisation analysis: each word's cross-attention over the image regions, per fusion layer (heads
averaged), drawn as heatmaps on the photo, next to CBAM's spatial attention map; one PNG grid.

    python scripts/visualize.py --model outputs/xattn --image photo.jpg --text "a dog on the beach" --output attn.png
"""

from modeling_xattn.training.apps.visualize import main as run


def main(argv=None) -> str:
    return run(argv, description=__doc__)


if __name__ == "__main__":
    main()
