"""The task registry: every task declared once, with the row target it needs, the head that serves it, its losses
and their Formula 4 weights, its evaluator, and what evaluation reports for it; and the rows that carry each task's
target.

Adding a task: its head in `modeling_xattn.py` (`register_head`), one `Task` below (or `register_task` from your own
code, before `modeling_xattn.training.options` is imported for its `--lambda_` option to exist), its tests and its
docs (docs/contributing.md). Training (the batches' targets, Formula 4's weights and their `--lambda_` options, the
validation's keys), evaluation, the non-finite-loss report, the model card and the run summary read it from here."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from modeling_xattn.training.data.schema import BATCH_TARGETS, BadRowCounter, missing_target_reason, row_targets


@dataclass(frozen=True)
class LossWeight:
    """A Formula 4 weight: the config field (`lambda_<loss>`, the weight of the model output's `loss_<loss>`) and the
    training option of the same name, its default (None: the recipe's) and its help."""

    name: str
    default: float | None = 1.0
    help: str | None = None


@dataclass(frozen=True)
class Task:
    """One task: `target` is what a row must carry ("statement": a text with a class label, "caption", "question"; a
    batch carries the targets of the tasks it trains, `batch_targets`), `head` the module of `XAttnForMultiTask` that
    serves it, `losses` its fields of the model output and `weights` the config fields that weigh them in Formula 4
    (`LossWeight`s: each is also a training option),
    `metrics` the keys evaluation reports, `validation` those the training loop's validation reports beside the
    losses (each as `val_<key>`, what `--metric_for_best_model` may name), `hub_task` and `hub_name` its Hub task type
    and name (the model card's pipeline tag and model-index), `pipeline` and `pipeline_input` the pipeline of this
    package that serves it and what it is called with (the run summary's example), `auto` whether `--tasks auto`
    trains it where the data has its target, `evaluate` what `evaluate_model` scores it with (None: nothing), a
    function `(model, processor, rows, settings, counter, outputs) -> metrics` or its "module:name" (loaded when first
    called, so that this table needs no import of the evaluation code); `usage` and
    `pipeline_usage` the model card's code that uses it (the loaded model, the pipeline), `usage_rank` where that code
    comes among a model's tasks, `pipeline_rank` which task's pipeline tag a model of several tasks takes (lowest
    first)."""

    name: str
    target: str
    head: str
    losses: tuple[str, ...]
    weights: tuple[LossWeight, ...]
    metrics: tuple[str, ...]
    validation: tuple[str, ...]
    hub_task: str
    hub_name: str
    pipeline: str
    pipeline_input: str
    auto: bool = True
    evaluate: Callable | str | None = None
    usage: str = ""
    pipeline_usage: str = ""
    usage_rank: int = 0
    pipeline_rank: int = 0

    @property
    def weight_names(self) -> tuple[str, ...]:
        return tuple(weight.name for weight in self.weights)

    def evaluator(self) -> Callable | None:
        """The function that scores this task (`evaluate`, imported where it is a "module:name")."""
        if isinstance(self.evaluate, str):
            module, name = self.evaluate.split(":")
            return getattr(importlib.import_module(module), name)
        return self.evaluate


CAPTION_SCORES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")  # the COCO toolkit's
STATEMENT_INPUT = '{"image": "photo.jpg", "text": "a statement"}'
EVALUATION = "modeling_xattn.training.evaluation"
REGISTRY = {task.name: task for task in (
    # an image and a statement in, a class out: the Hub's visual-question-answering is the task of that shape
    Task("classification", target="statement", head="classifier", losses=("loss_ce",),
         weights=(LossWeight("lambda_ce"),), evaluate=f"{EVALUATION}:score_classification",
         metrics=("accuracy", "macro_f1"), validation=("accuracy",),
         hub_task="visual-question-answering", hub_name="Image-text classification",
         pipeline="image-text-classification", pipeline_input=STATEMENT_INPUT,
         usage=('inputs = processor(images=image, text="a statement about the photo")\n'
                'print(dict(zip(model.config.id2label.values(), '
                'model(**inputs).logits.softmax(-1)[0].tolist())))'),
         pipeline_usage=('classifier = pipeline("image-text-classification", model="<repo>", revision="<commit>", '
                         'trust_remote_code=True)\n'
                         'print(classifier("photo.jpg", text="a statement about the photo"))'),
         usage_rank=1, pipeline_rank=3),
    # ranking captions for a photo is what the zero-shot-image-classification pipeline serves
    Task("retrieval", target="caption", head="retrieval", losses=("loss_cl", "loss_itm"),
         weights=(LossWeight("lambda_cl"), LossWeight(
             "lambda_itm", None, "weight of the image-text matching loss, which trains the head that re-ranks "
             "retrieval shortlists (the paper has no such loss)")),
         evaluate=f"{EVALUATION}:score_retrieval",
         metrics=("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"),
         validation=("i2t_R@1", "i2t_R@5", "i2t_R@10", "i2t_mean_rank", "i2t_median_rank"),
         hub_task="zero-shot-image-classification", hub_name="Image-text retrieval",
         pipeline="zero-shot-image-classification",
         pipeline_input='"photo.jpg", candidate_labels=["a dog on the beach", "a red bus"]',
         usage=('captions = processor(captions=["a dog on the beach", "a red bus"])\n'
                'images = model.get_image_features(processor(images=image)["pixel_values"])\n'
                'print(images @ model.get_text_features(captions["caption_input_ids"], '
                'captions["caption_attention_mask"]).T)'),
         pipeline_usage=('ranker = pipeline("zero-shot-image-classification", model="<repo>", revision="<commit>", '
                         'trust_remote_code=True)\n'
                         'print(ranker("photo.jpg", candidate_labels=["a dog on the beach", "a red bus"]))'),
         usage_rank=3, pipeline_rank=2),
    # the loop's validation captions only when --metric_for_best_model names a caption metric
    Task("captioning", target="caption", head="captioner", losses=("loss_seq",),
         weights=(LossWeight("lambda_seq"),), evaluate=f"{EVALUATION}:score_captioning",
         metrics=CAPTION_SCORES, validation=CAPTION_SCORES, hub_task="image-to-text", hub_name="Image captioning",
         pipeline="image-to-text", pipeline_input='"photo.jpg"',
         usage=('ids = model.generate(processor(images=image)["pixel_values"])  # generation_config.json\n'
                'print(processor.batch_decode(ids, skip_special_tokens=True))'),
         pipeline_usage=('captioner = pipeline("image-to-text", model="<repo>", revision="<commit>", '
                         'trust_remote_code=True)\n'
                         'print(captioner("photo.jpg"))'),
         usage_rank=0, pipeline_rank=0),
    # VQA: answers as classes on the classifier (soft scores), trained only when asked for
    Task("vqa", target="question", head="classifier", losses=("loss_ce",),
         weights=(LossWeight("lambda_ce"),), evaluate=f"{EVALUATION}:score_vqa",
         metrics=("vqa_accuracy",), validation=("vqa_accuracy",),
         hub_task="visual-question-answering", hub_name="Visual question answering",
         pipeline="image-text-classification", pipeline_input=STATEMENT_INPUT, auto=False,
         usage=('inputs = processor(images=image, text="what is the man holding?")\n'
                'print(model.config.id2label[model(**inputs).logits.argmax(-1).item()])'),
         pipeline_usage=('answerer = pipeline("image-text-classification", model="<repo>", revision="<commit>", '
                         'trust_remote_code=True)  # (transformers 5 has no VQA pipeline)\n'
                         'print(answerer("photo.jpg", text="what is the man holding?"))'),
         usage_rank=2, pipeline_rank=1),
)}


def register_task(task: Task) -> Task:
    """Add `task` to the registry (a task of your own code: its head registered with `modeling_xattn.register_head`).
    Training, evaluation, Formula 4's weights and the model card then serve it as they serve the tasks above. Its
    weights become `--lambda_` training options only where it is registered before `modeling_xattn.training.options`
    is first imported (the options are made then); otherwise each takes its `LossWeight` default, which the saved
    config records."""
    if task.name in REGISTRY or task.name == "auto":
        raise ValueError(f"a task named {task.name!r} is already registered")
    check_weights(task)
    REGISTRY[task.name] = task
    return task


def check_weights(task: Task) -> None:
    """A task's weights are its losses' (`loss_<x>` is weighed by `lambda_<x>`, the field the model reads): a weight of
    another name would be an option and a config field that changes nothing."""
    expected = tuple(f"lambda_{loss.removeprefix('loss_')}" for loss in task.losses)
    if not all(loss.startswith("loss_") for loss in task.losses) or set(task.weight_names) != set(expected):
        raise ValueError(f"task {task.name!r}: losses {list(task.losses)} are weighed by {list(expected)}, "
                         f"not {list(task.weight_names)}")


def evaluated_tasks() -> tuple[str, ...]:
    """The tasks `evaluate_model` scores (those with an evaluator), in registry order."""
    return tuple(name for name, task in REGISTRY.items() if task.evaluate is not None)


def loss_keys() -> tuple[str, ...]:
    """Every loss of the model output a task trains (`loss_ce`, ...), each once."""
    return tuple(dict.fromkeys(key for task in REGISTRY.values() for key in task.losses))


def loss_weight_specs() -> tuple[LossWeight, ...]:
    """Every Formula 4 weight, each once: the config fields and the training options."""
    return tuple({weight.name: weight for task in REGISTRY.values() for weight in task.weights}.values())


def usage_order() -> tuple[str, ...]:
    """The order a model's uses are shown in (the model card's code, the run summary's pipeline): the first it
    trained."""
    return tuple(sorted(REGISTRY, key=lambda name: REGISTRY[name].usage_rank))


def pipeline_tag(tasks) -> str:
    """The Hub pipeline tag of a model trained on `tasks` (names, or a comma-separated string): that of the trained
    task of lowest `pipeline_rank`."""
    tasks = {t.strip() for t in tasks.split(",")} if isinstance(tasks, str) else set(tasks)
    ranked = sorted((REGISTRY[task].pipeline_rank, REGISTRY[task].hub_task) for task in tasks if task in REGISTRY)
    return ranked[0][1] if ranked else "image-to-text"


def validation_metrics(tasks) -> list[str]:
    """The metrics the loop's validation reports for `tasks` (what `--metric_for_best_model` may name)."""
    names = ["val_loss", *(f"val_{key}" for task in sorted(tasks) for key in REGISTRY[task].losses)]
    names += [f"val_{key}" for task in sorted(tasks) for key in REGISTRY[task].validation]
    return list(dict.fromkeys(names))


def loss_weights(tasks, weights: dict[str, float]) -> dict[str, float]:
    """Formula 4's weights for a run that trains `tasks`: each task's own weights as given, 0 for every other."""
    used = {weight for name in tasks for weight in REGISTRY[name].weight_names}
    return {spec.name: (weights[spec.name] if spec.name in used else 0.0) for spec in loss_weight_specs()}


def batch_targets(tasks) -> str:
    """The batch targets (a name of `data.schema.BATCH_TARGETS`) that serve a set of training tasks: their registry
    targets, joined by "+"."""
    wanted = {REGISTRY[task].target for task in tasks}
    targets = "+".join(target for target in ("statement", "question", "caption") if target in wanted)
    if targets not in BATCH_TARGETS:
        raise ValueError(f"no batch serves the tasks {sorted(tasks)} together (their targets: {targets})")
    return targets


def _text_rows(dataset) -> list[dict]:
    """Every row's text columns (no image is decoded)."""
    wanted = [c for c in ("text", "question", "label", "captions", "image_id") if c in dataset.column_names]
    columns = {name: list(dataset[name]) for name in wanted}
    return [{name: columns[name][i] for name in wanted} for i in range(len(dataset))]


def _target_rows(dataset, targets: str) -> list[set[str]]:
    """Which of a batch's `targets` each row carries."""
    return [row_targets(row, targets) for row in _text_rows(dataset)]


def select_tasks(requested: str, dataset) -> set[str]:
    """The tasks to train: `requested` (comma-separated) or, for "auto", every task whose targets the data has
    (classification where rows carry a text and a label, retrieval and captioning where they carry captions).

    Raises a `ValueError` naming the task when a requested task's targets are in no row of `dataset`."""
    probe = _target_rows(dataset, "question+caption" if "vqa" in requested else "statement+caption")
    have = Counter(target for targets in probe for target in targets)
    if requested == "auto":
        tasks = {name for name, task in REGISTRY.items() if task.auto and have[task.target]}
        if not tasks:
            questions = sum(bool(r.get("question")) for r in _text_rows(dataset))
            hint = f"; {questions} rows carry a VQA question: train them with --tasks vqa" if questions else ""
            raise ValueError(f"no row of the {len(dataset)} training rows has a caption or a labelled text: nothing "
                             f"to train (check --caption_column, --text_column and --label_column{hint})")
        return tasks
    tasks = {task.strip() for task in requested.split(",") if task.strip()}
    unknown = tasks - set(REGISTRY)
    if unknown or not tasks or {"classification", "vqa"} <= tasks:
        raise ValueError(f"--tasks {requested}: choose from {', '.join(REGISTRY)} (or auto); classification and vqa "
                         f"share one classifier, so not both; unknown: {sorted(unknown)}")
    missing = [task for task in sorted(tasks) if not have[REGISTRY[task].target]]
    if missing:
        found = ", ".join(f"{have[name]} with a {name}" for name in ("statement", "question", "caption"))
        raise ValueError(f"--tasks {requested}: no training row has a target for {', '.join(missing)} "
                         f"(of {len(dataset)} rows: {found}; a statement is a text with a label). Drop the task "
                         "from --tasks or point --caption_column / --text_column / --label_column at the data")
    return tasks


def usable_rows(dataset, targets: str, counter: BadRowCounter):
    """The rows of `dataset` that carry at least one of a batch's `targets` (one task's: `REGISTRY[name].target`);
    the others are counted in `counter` by reason and dropped before training, so epochs have a known length."""
    keep = []
    for index, row in enumerate(_text_rows(dataset)):
        if row_targets(row, targets):
            keep.append(index)
        else:
            reason = missing_target_reason(row, targets)
            counter.add(f"no target for the task ({reason})", str(row.get("image_id", index)))
    return dataset if len(keep) == len(dataset) else dataset.select(keep)
