"""The relational diagnostic (`--dataset relations`): scenes of the embedded dataset's shapes on a grid of cells, each
with one question that either names one object's property (non-relational) or asks about a relation between objects
(relational), as Sort-of-CLEVR (Santoro et al. 2017) and CLEVR (Johnson et al. 2017) ask, and true statements of
spatial relations with their flipped twins for matching. Everything is a deterministic function of (seed, index).

Questions (kind, subtype: the question; its answers):
- non-relational, shape: "what shape is the red one" (the shapes);
- non-relational, left: "is the red one on the left" (yes, no; yes when it is in the first column);
- relational, nearest / furthest: "what shape is nearest to / furthest from the red one" (the shapes; distances
  between cell centres, and the scene is redrawn until one object is strictly nearest / furthest);
- relational, count: "how many shapes have the same shape as the red one" (1..3, the red one counted, as
  Sort-of-CLEVR counts; every count scene holds 6 shapes, one of a kind, two of another and three of a third);
- relational, colour: "what colour is the shape directly left of the blue circle" (the colours; the nearest shape
  left of the blue circle in its own row).
Kinds, subtypes and answers cycle with the row index (then the scene is drawn to fit), so every run of rows is
balanced over them. A scene's shapes (each drawn independently) and colours are drawn before the question, and the
answer is given to its object by swapping two objects' shapes or colours; a count scene's shapes always come one, two
and three of a kind. So no scene is built around its answer (docs/diagnostic.md measures what a picture alone tells).
"Left of", "right of", "above" and "below" compare columns and rows strictly, as CLEVR's spatial relations do.
Relation statements ("the red circle is left of the blue square") are true for their scene; each has two flipped
twins that are false for it: the relation reversed ("... is right of the blue square") and the objects swapped
("the blue square is left of the red circle").

Every row records its objects (colour, shape, cell: row-major over the grid), the object the question names
(`subject`, whose colour word is at characters `subject_span` of the question: the word the pointing game reads) and
its kind and subtype, so every figure can be split by them and checked against the scene.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from modeling_xattn.training.data.synthetic import COLOURS, SHAPES, _draw_shape
from modeling_xattn.training.data.views import EpochSeeded

COUNTS = tuple(str(n) for n in range(10))  # count answers as digits, as VQA's annotations and its evaluation write them
SUBTYPES = {"non-relational": ("shape", "left"), "relational": ("nearest", "furthest", "count", "colour")}
KINDS = tuple(SUBTYPES)
RELATIONS = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# A count question's scene holds one shape of one kind, two of another and three of a third, whatever its answer:
# its picture is then the same for every answer and only the shape the question names tells it (scenes drawn until
# a random subject had the answer hold rare runs of equal shapes for the rare answers, which gave the answer away).
COUNT_PATTERN = (1, 2, 3)
MAX_TRIES = 1000  # scenes drawn for one row before the knobs are declared unable to give its question


@dataclass(frozen=True)
class RelationSpec:
    """The generator's knobs: `objects` / `min_objects` shapes per scene (each in a distinct colour of the first
    `num_colours` of the palette, each in its own cell of a `grid` x `grid` grid), `num_shapes` of the shape kinds,
    `image_size` pixels a side, `statements` true relation statements per scene, `questions` the kinds asked
    ("all", "relational" or "non-relational"), `seed`."""

    image_size: int = 64
    objects: int = 6
    min_objects: int = 4
    num_colours: int = len(COLOURS)
    num_shapes: int = len(SHAPES)
    grid: int = 3
    statements: int = 5
    questions: str = "all"
    seed: int = 0

    def check(self, prefix: str = "") -> "RelationSpec":
        """Stop with a message naming the option (`prefix` + knob) when the knobs cannot make the questions."""
        def bad(name, why):
            raise ValueError(f"{prefix}{name}: {why}")

        if self.questions not in ("all", *KINDS):
            bad("questions", f"choose all, relational or non-relational, got {self.questions!r}")
        if not 2 <= self.min_objects <= self.objects:
            bad("min_objects", f"need 2 <= min_objects <= objects (a relation needs two shapes), got "
                               f"min_objects={self.min_objects}, objects={self.objects}")
        if not 2 <= self.num_colours <= len(COLOURS):
            bad("num_colours", f"the palette has {len(COLOURS)} colours: use 2..{len(COLOURS)}, got {self.num_colours}")
        if self.objects > self.num_colours:
            bad("objects", f"each shape has its own colour: objects ({self.objects}) must not exceed num_colours "
                           f"({self.num_colours})")
        if not 2 <= self.num_shapes <= len(SHAPES):
            bad("num_shapes", f"need 2..{len(SHAPES)} shape kinds (a count needs shapes that differ), got "
                              f"{self.num_shapes}")
        if self.grid < 2 or self.objects > self.grid * self.grid:
            bad("grid", f"a {self.grid}x{self.grid} grid has {self.grid * self.grid} cells for up to {self.objects} "
                        "shapes and needs a first column and a column beside it: use a larger grid or fewer objects")
        if self.image_size < 8 * self.grid:
            bad("grid", f"{self.image_size} px leaves under 8 px per cell of a {self.grid}x{self.grid} grid")
        if "relational" in self.kinds and (self.num_colours < sum(COUNT_PATTERN) or self.grid ** 2 < sum(COUNT_PATTERN)
                                           or self.num_shapes < len(COUNT_PATTERN)):
            bad("num_colours" if self.num_colours < sum(COUNT_PATTERN) else "grid",
                f"a count question's scene holds {sum(COUNT_PATTERN)} shapes (one, two and three of a kind), each in "
                f"its own colour and cell: use 6+ colours and a 3x3+ grid, or non-relational questions only")
        if not 1 <= self.statements <= 5:
            bad("statements", f"1..5 relation statements per scene, got {self.statements}")
        return self

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(COLOURS)[: self.num_colours]

    @property
    def shapes(self) -> tuple[str, ...]:
        return SHAPES[: self.num_shapes]

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.questions == "all" else (self.questions,)


def answers_of(subtype: str, spec: RelationSpec) -> tuple[str, ...]:
    """The answers a subtype's questions take, each equally likely."""
    if subtype in ("shape", "nearest", "furthest"):
        return spec.shapes
    if subtype == "left":
        return ("yes", "no")
    if subtype == "count":
        return COUNTS[1: len(COUNT_PATTERN) + 1]
    return spec.colours


def cell_of(cell: int, grid: int) -> tuple[int, int]:
    """(row, column) of a row-major cell index."""
    return divmod(cell, grid)


def relation_holds(relation: str, cell_a: int, cell_b: int, grid: int) -> bool:
    """Whether "A is <relation> B" holds for objects in cells `cell_a` and `cell_b` (strict comparisons)."""
    (row_a, col_a), (row_b, col_b) = cell_of(cell_a, grid), cell_of(cell_b, grid)
    return {"left of": col_a < col_b, "right of": col_a > col_b, "above": row_a < row_b,
            "below": row_a > row_b}[relation]


def _distance(a: int, b: int, grid: int) -> int:
    (row_a, col_a), (row_b, col_b) = cell_of(a, grid), cell_of(b, grid)
    return (row_a - row_b) ** 2 + (col_a - col_b) ** 2


def _give(objects: list[list], index: int, field: int, value: str) -> None:
    """Give object `index` the colour (`field` 0) or shape (1) `value` by swapping with the object that has it, so the
    scene's colours and shapes stay as drawn (an image alone then says nothing of the answer); set it where none
    has it."""
    holder = next((i for i, obj in enumerate(objects) if obj[field] == value), None)
    if holder is None:
        objects[index][field] = value
    else:
        objects[index][field], objects[holder][field] = objects[holder][field], objects[index][field]


def scene_shapes(count: int, rng: random.Random, spec: RelationSpec) -> list[str]:
    """The shapes of a scene of `count` objects, each drawn independently of the others and of the question, so
    which shapes a picture holds does not tell which question it comes with. A question's answer is then given to
    its object by a swap (`_give`)."""
    return [rng.choice(spec.shapes) for _ in range(count)]


def _question(subtype: str, answer: str, objects: list[list], rng: random.Random, spec: RelationSpec):
    """Make the scene answer `answer` to a question of `subtype`, changing shapes or colours where the question needs
    it; returns (question, subject) or None when this layout cannot (the caller draws another)."""
    grid, count = spec.grid, len(objects)
    if subtype == "shape":
        subject = rng.randrange(count)
        _give(objects, subject, 1, answer)
        return f"what shape is the {objects[subject][0]} one", subject
    if subtype == "left":
        wanted = [i for i, (_, _, cell) in enumerate(objects) if (cell % grid == 0) == (answer == "yes")]
        if not wanted:
            return None
        subject = rng.choice(wanted)
        return f"is the {objects[subject][0]} one on the left", subject
    if subtype in ("nearest", "furthest"):
        subject = rng.randrange(count)
        others = sorted((_distance(objects[subject][2], objects[i][2], grid), i) for i in range(count) if i != subject)
        if subtype == "furthest":
            others.reverse()
        if len(others) > 1 and others[0][0] == others[1][0]:
            return None  # no single nearest / furthest
        _give(objects, others[0][1], 1, answer)
        word = "nearest to" if subtype == "nearest" else "furthest from"
        return f"what shape is {word} the {objects[subject][0]} one", subject
    if subtype == "count":
        kinds = rng.sample(spec.shapes, len(COUNT_PATTERN))
        shapes = [kind for kind, times in zip(kinds, COUNT_PATTERN) for _ in range(times)]
        rng.shuffle(shapes)
        for obj, shape in zip(objects, shapes):
            obj[1] = shape
        subject = rng.choice([i for i, shape in enumerate(shapes) if shapes.count(shape) == int(answer)])
        return f"how many shapes have the same shape as the {objects[subject][0]} one", subject
    # colour: the nearest shape left of the subject in its own row ("directly left of"); the one shape in any column
    # left of it would always be the scene's leftmost shape, which the picture alone gives away
    candidates = []
    for subject in range(count):
        row, col = cell_of(objects[subject][2], grid)
        left = [(cell_of(objects[i][2], grid)[1], i) for i in range(count)
                if cell_of(objects[i][2], grid)[0] == row and cell_of(objects[i][2], grid)[1] < col]
        if left:
            candidates.append((subject, max(left)[1]))
    if not candidates:
        return None
    subject, left = rng.choice(candidates)
    _give(objects, left, 0, answer)
    return f"what colour is the shape directly left of the {objects[subject][0]} {objects[subject][1]}", subject


def _statements(objects: list[list], rng: random.Random, spec: RelationSpec):
    """Up to `spec.statements` true relation statements, each with its reversed and swapped twins."""
    facts = [(a, relation, b) for a in range(len(objects)) for b in range(len(objects)) if a != b
             for relation in RELATIONS if relation_holds(relation, objects[a][2], objects[b][2], spec.grid)]
    rng.shuffle(facts)
    name = [f"the {colour} {shape}" for colour, shape, _ in objects]
    true, reversed_, swapped = [], [], []
    for a, relation, b in facts[: spec.statements]:
        true.append(f"{name[a]} is {relation} {name[b]}")
        reversed_.append(f"{name[a]} is {RELATIONS[relation]} {name[b]}")
        swapped.append(f"{name[b]} is {relation} {name[a]}")
    return true, reversed_, swapped


def draw_scene(objects, spec: RelationSpec, rng: random.Random) -> Image.Image:
    """The scene: each object drawn in its cell with a little jitter and size variation (as the embedded dataset)."""
    size = spec.image_size
    image = Image.new("RGB", (size, size), (30, 30, 30))
    draw = ImageDraw.Draw(image)
    cell = size / spec.grid
    for colour, shape, position in objects:
        row, col = cell_of(position, spec.grid)
        jitter = rng.uniform(-0.08, 0.08) * cell
        scale = rng.uniform(0.55, 0.8) * cell
        cx, cy = (col + 0.5) * cell + jitter, (row + 0.5) * cell - jitter
        _draw_shape(draw, shape, (cx - scale / 2, cy - scale / 2, cx + scale / 2, cy + scale / 2), COLOURS[colour])
    return image


ROWS_PER_SEED = 1_000_003


def row_seed(seed: int, index: int):
    """The random seed of row `index` of `seed`: `seed * ROWS_PER_SEED + index` for the first ROWS_PER_SEED rows, a
    string of both beyond (seeded through SHA-512), so that a long run's fresh scenes never reach another seed's rows."""
    return seed * ROWS_PER_SEED + index if 0 <= index < ROWS_PER_SEED else f"{seed}/{index}"


def relation_example(index: int, spec: RelationSpec) -> dict:
    """Row `index` of the diagnostic drawn from `spec.seed`, in the data layer's schema plus the scene's record."""
    rng = random.Random(row_seed(spec.seed, index))
    # the question's kind, subtype and answer cycle with the index, so any run of rows is balanced over each
    kind = spec.kinds[index % len(spec.kinds)]
    step = index // len(spec.kinds)
    subtype = SUBTYPES[kind][step % len(SUBTYPES[kind])]
    answers = answers_of(subtype, spec)
    answer = answers[(step // len(SUBTYPES[kind])) % len(answers)]
    fewest, most = spec.min_objects, spec.objects
    if subtype == "count":
        fewest = most = sum(COUNT_PATTERN)
    for _ in range(MAX_TRIES):
        count = rng.randint(fewest, most)
        cells = rng.sample(range(spec.grid * spec.grid), count)
        objects = [[colour, shape, cell] for colour, shape, cell in
                   zip(rng.sample(spec.colours, count), scene_shapes(count, rng, spec), cells)]
        made = _question(subtype, answer, objects, rng, spec)
        if made is not None:
            break
    else:
        raise ValueError(f"relations: {MAX_TRIES} scenes of {spec.min_objects}-{spec.objects} shapes on a "
                         f"{spec.grid}x{spec.grid} grid gave no {subtype!r} question with answer {answer!r}; change "
                         "--relations_grid or the object counts")
    question, subject = made
    colour = objects[subject][0]
    start = question.index(f"the {colour} ") + len("the ")
    true, reversed_, swapped = _statements(objects, rng, spec)
    return {
        "image": draw_scene(objects, spec, rng),
        "text": "",
        "captions": true,
        "label": -100,
        "answers": [answer] * 10,
        "image_id": str(index),
        "question": question,
        "question_id": str(index),
        "answer_type": f"{kind} {subtype}",
        "kind": kind,
        "subtype": subtype,
        "object_colours": [o[0] for o in objects],
        "object_shapes": [o[1] for o in objects],
        "object_cells": [o[2] for o in objects],
        "subject": subject,
        "subject_span": [start, start + len(colour)],
        "reversed_statements": reversed_,
        "swapped_statements": swapped,
    }


def relation_features():
    import datasets

    strings = datasets.Sequence(datasets.Value("string"))
    return datasets.Features({
        "image": datasets.Image(), "text": datasets.Value("string"), "captions": strings,
        "label": datasets.Value("int64"), "answers": strings, "image_id": datasets.Value("string"),
        "question": datasets.Value("string"), "question_id": datasets.Value("string"),
        "answer_type": datasets.Value("string"), "kind": datasets.Value("string"),
        "subtype": datasets.Value("string"), "object_colours": strings, "object_shapes": strings,
        "object_cells": datasets.Sequence(datasets.Value("int64")), "subject": datasets.Value("int64"),
        "subject_span": datasets.Sequence(datasets.Value("int64")), "reversed_statements": strings,
        "swapped_statements": strings,
    })


def relations_dataset(num_samples: int, spec: RelationSpec, first: int = 0):
    """Rows `first` .. `first + num_samples - 1` of the diagnostic as a `datasets.Dataset`."""
    import datasets

    spec.check()
    rows = [relation_example(first + i, spec) for i in range(num_samples)]
    features = relation_features()
    return datasets.Dataset.from_dict({key: [row[key] for row in rows] for key in features}, features=features)


class FreshScenes(EpochSeeded):
    """The training examples of the diagnostic: epoch 0 is the stored train rows, and every later epoch draws as many
    new scenes from the same seed (rows `epoch * N + index`), so the training set is as large as the budget uses and
    nothing is held in memory. Each example takes one of its scene's relation statements as its caption, drawn from
    (seed, epoch, index) (`EpochSeeded`), so a resumed run sees the same examples.

    `curriculum`: the scenes of epoch e hold `curriculum.stage(e)` objects at most (`Curriculum`), so training starts on
    scenes of few shapes, where a word finds its region among few others, and grows to the full scenes."""

    def __init__(self, dataset, spec: RelationSpec, seed: int = 0, curriculum: "Curriculum | None" = None):
        super().__init__(dataset, seed)
        self.spec, self.curriculum = spec, curriculum

    def spec_of(self, epoch: int) -> RelationSpec:
        return self.spec if self.curriculum is None else self.curriculum.spec(self.spec, epoch)

    def __getitem__(self, index: int) -> dict:
        epoch = int(self._epoch[0])
        row = (self.dataset[index] if epoch == 0
               else relation_example(epoch * len(self.dataset) + index, self.spec_of(epoch)))
        count = len(row["captions"])
        if count < 2:
            return row
        return {**row, "caption_index": int(torch.randint(count, (1,), generator=self.generator(index)))}


@dataclass(frozen=True)
class Curriculum:
    """Training scenes that grow: `start` objects at most in the first `epochs_per_object` epochs, one more every
    `epochs_per_object` epochs after, up to the spec's own; each scene then draws its count from `fewest` up to that
    (easy scenes stay in the mix). Scenes of 4-6 shapes from the start leave both the word-to-region look-up and the
    shape features at chance for thousands of steps (docs/diagnostic.md); scenes of two shapes teach them first."""

    start: int = 2
    fewest: int = 2
    epochs_per_object: int = 2

    def spec(self, spec: RelationSpec, epoch: int) -> RelationSpec:
        most = min(spec.objects, self.start + epoch // self.epochs_per_object)
        return dataclasses.replace(spec, objects=max(most, self.fewest), min_objects=min(self.fewest, most))


def pointing_cell(region: int, regions_per_side: int, grid: int) -> int:
    """The scene cell (row-major over `grid` x `grid`) that holds the centre of feature region `region` (row-major
    over `regions_per_side` x `regions_per_side`): where the pointing game says an attention peak points."""
    row, col = divmod(region, regions_per_side)
    to_cell = lambda i: min(int((i + 0.5) * grid / regions_per_side), grid - 1)  # noqa: E731
    return to_cell(row) * grid + to_cell(col)


def cell_share(cell: int, regions_per_side: int, grid: int) -> float:
    """The share of the regions whose centre lies in `cell`: the pointing game's chance of a hit on it."""
    total = regions_per_side * regions_per_side
    return sum(pointing_cell(r, regions_per_side, grid) == cell for r in range(total)) / total


__all__ = ["Curriculum", "FreshScenes", "KINDS", "RELATIONS", "SUBTYPES", "RelationSpec", "answers_of", "cell_of", "cell_share", "draw_scene",
           "pointing_cell", "relation_example", "relation_holds", "relations_dataset"]
