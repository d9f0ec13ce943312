"""The embedded default dataset: coloured shapes on a 3x3 grid, with a 3-way statement, five captions and a VQA question
per image, drawn deterministically from a seed in seconds (no download). `synthetic_dataset` returns it in the data
layer's schema (`schema.SCHEMA`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

from modeling_xattn.configuration_xattn import SENTIMENT_LABELS

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30),
           "purple": (150, 60, 190), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle", "cross")
POSITIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")


@dataclass
class SyntheticSpec:
    """Size knobs of the embedded dataset.

    num_samples: rows to make; image_size: side in pixels; objects: shapes per image (each a distinct colour, on a
    3x3 grid of cells); min_objects: if set, each image draws its count from min_objects..objects;
    num_colours / num_shapes: how many of the palette's colours and shapes are used;
    captions_per_image: reference captions per image (1-5: listing, positions, count, "a picture of", bindings);
    seed: everything is a deterministic function of (seed, row index).
    """

    num_samples: int = 4000
    image_size: int = 64
    objects: int = 2
    seed: int = 0
    num_colours: int = 4
    num_shapes: int = len(SHAPES)
    captions_per_image: int = 5
    min_objects: int | None = None


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], colour):
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    else:  # cross
        w = (x1 - x0) / 3
        draw.rectangle((x0 + w, y0, x1 - w, y1), fill=colour)
        draw.rectangle((x0, y0 + w, x1, y1 - w), fill=colour)


NUMBERS = ("no", "one", "two", "three", "four", "five", "six")


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def synthetic_example(index: int, spec: SyntheticSpec) -> dict:
    """One row of the embedded dataset (see `synthetic_dataset` for the design)."""
    rng = random.Random(spec.seed * 1_000_003 + index)
    palette, shape_names = list(COLOURS)[: spec.num_colours], SHAPES[: spec.num_shapes]
    count = spec.objects if spec.min_objects is None else rng.randint(spec.min_objects, spec.objects)
    colours = rng.sample(palette, count)
    shapes = [rng.choice(shape_names) for _ in colours]
    cells = sorted(rng.sample(range(9), count))
    order = list(range(count))
    rng.shuffle(order)
    objects = [(colours[i], shapes[i], cells[j]) for j, i in enumerate(order)]  # cells sorted: reading order

    size = spec.image_size
    image = Image.new("RGB", (size, size), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for colour, shape, position in objects:
        row, col = divmod(position, 3)
        jitter = rng.uniform(-0.08, 0.08) * cell
        scale = rng.uniform(0.55, 0.8) * cell
        cx, cy = (col + 0.5) * cell + jitter, (row + 0.5) * cell - jitter
        _draw_shape(draw, shape, (cx - scale / 2, cy - scale / 2, cx + scale / 2, cy + scale / 2), COLOURS[colour])

    # 3-way statement naming two colours; the label is drawn first so the classes are balanced.
    label = rng.randrange(3)
    present = sorted({colour for colour, _, _ in objects})
    absent = [c for c in palette if c not in present]
    if label == 0:  # positive: both named colours are in the image
        named = rng.sample(present, 2)
    elif label == 2:  # negative: neither is
        named = rng.sample(absent, 2)
    else:  # neutral: one is, one is not (the statement is half true)
        named = [rng.choice(present), rng.choice(absent)]
        rng.shuffle(named)
    text = f"there is a {named[0]} shape and a {named[1]} shape"

    listed = _join([f"a {c} {s}" for c, s, _ in objects])
    captions = [  # five references per image, as COCO has
        listed,
        " ".join(f"{c} {s} at the {POSITIONS[p]}." for c, s, p in objects),
        f"there {'is' if len(objects) == 1 else 'are'} {NUMBERS[len(objects)]} "
        f"shape{'s' if len(objects) > 1 else ''}: {listed}",
        f"a picture of {listed} on a dark background",
        _join([f"the {c} shape is a {s}" for c, s, _ in objects]),
    ][: spec.captions_per_image]
    asked_colour, asked_shape, _ = objects[rng.randrange(len(objects))]
    return {
        "image": image,
        "text": text,
        "captions": captions,
        "label": label,
        "question": f"what shape is the {asked_colour} one",
        "answers": [asked_shape] * 10,
        "image_id": index,
    }


def synthetic_dataset(num_samples: int = 4000, image_size: int = 64, objects: int = 2, seed: int = 0,
                      num_colours: int = 4, num_shapes: int = len(SHAPES), captions_per_image: int = 5,
                      min_objects: int | None = None):
    """The embedded default dataset: coloured shapes on a 3x3 grid, deterministic by seed, made on the fly.

    Each image holds `objects` shapes (or a count drawn from `min_objects`..`objects`), each in a distinct colour of
    the first `num_colours` of the palette (defaults: 2 shapes, 4 colours: the sizes the main job learns).
    The 3-way statement "there is a <colour> shape and a <colour> shape" is *positive* when both named colours are in
    the image, *neutral* when exactly one is (half true), and *negative* when neither is. The label is drawn first and
    the statement built from it:
    - from the text alone every colour pair is equally likely under each label (chance, 1/3);
    - from the image alone nothing says which colours will be named (chance, 1/3);
    - with both, each colour word has to be grounded in the image regions (is there a region of this colour?) and the
      two answers combined: a word-to-region look-up, which is what text-to-image cross-attention does.
    The statement is about colours, a per-pixel feature a tiny model can ground within the main job's minutes
    (docs/data.md, "The embedded dataset").
    Five reference captions per image (as COCO has) describe every shape in reading order in five phrasings
    ("a red circle, a blue square and a green cross", "red circle at the top left. ...", "there are three shapes:
    ...", "a picture of ... on a dark background", "the red shape is a circle, ..."), so most images have a distinct
    description and retrieval is meaningful. VQA rows ask "what shape is the <colour> one" with 10 identical answers.
    Knobs: `num_samples`, `image_size`, `objects`, `min_objects`, `num_colours`, `num_shapes`,
    `captions_per_image`, `seed`.
    """
    import datasets

    fewest = objects if min_objects is None else min_objects
    if not 2 <= fewest <= objects <= num_colours - 2 or num_colours > len(COLOURS) or not 1 <= num_shapes <= len(SHAPES):
        raise ValueError(f"synthetic_dataset: need 2 <= min_objects <= objects <= num_colours - 2 (two colours present and "
                         f"two absent), num_colours <= {len(COLOURS)}, 1 <= num_shapes <= {len(SHAPES)}; got "
                         f"objects={objects}, min_objects={min_objects}, num_colours={num_colours}, num_shapes={num_shapes}")
    if not 1 <= captions_per_image <= 5:
        raise ValueError(f"synthetic_dataset: captions_per_image must be 1-5, got {captions_per_image}")
    spec = SyntheticSpec(num_samples, image_size, objects, seed, num_colours, num_shapes, captions_per_image,
                         min_objects)
    features = datasets.Features({
        "image": datasets.Image(),
        "text": datasets.Value("string"),
        "captions": datasets.Sequence(datasets.Value("string")),
        "label": datasets.ClassLabel(names=list(SENTIMENT_LABELS)),
        "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")),
        "image_id": datasets.Value("int64"),
    })
    rows = [synthetic_example(i, spec) for i in range(num_samples)]
    columns = {key: [row[key] for row in rows] for key in features}
    return datasets.Dataset.from_dict(columns, features=features)


__all__ = ["COLOURS", "POSITIONS", "SHAPES", "SyntheticSpec", "synthetic_dataset", "synthetic_example"]
