"""What a run trains on: the tasks, the target each needs, and the rows that carry one."""

from __future__ import annotations

from collections import Counter

from modeling_xattn.training.data.schema import BadRowCounter, missing_target_reason, row_targets

TASKS = ("classification", "retrieval", "captioning", "vqa")


# Which target each task needs (see `data.schema.row_targets`).
TASK_NEEDS = {"classification": "statement", "retrieval": "caption", "captioning": "caption", "vqa": "question"}


def collator_task(tasks: set[str]) -> str:
    """The `XAttnCollator` task that serves a set of training tasks."""
    if tasks == {"classification"}:
        return "classification"
    if "vqa" in tasks:
        return "vqa" if tasks == {"vqa"} else "vqa+captions"
    if "classification" in tasks:
        return "multitask"
    return "captioning"  # retrieval and/or captioning: a caption per row


def _text_rows(dataset) -> list[dict]:
    """Every row's text columns (no image is decoded)."""
    wanted = [c for c in ("text", "question", "label", "captions", "image_id") if c in dataset.column_names]
    columns = {name: list(dataset[name]) for name in wanted}
    return [{name: columns[name][i] for name in wanted} for i in range(len(dataset))]


def _target_rows(dataset, task: str) -> list[set[str]]:
    """Each row's targets for a collator task."""
    return [row_targets(row, task) for row in _text_rows(dataset)]


def select_tasks(requested: str, dataset) -> set[str]:
    """The tasks to train: `requested` (comma-separated) or, for "auto", every task whose targets the data has
    (classification where rows carry a text and a label, retrieval and captioning where they carry captions).

    Raises a `ValueError` naming the task when a requested task's targets are in no row of `dataset`."""
    probe = _target_rows(dataset, "vqa+captions") if "vqa" in requested else _target_rows(dataset, "multitask")
    have = Counter(target for targets in probe for target in targets)
    if requested == "auto":
        tasks = {task for task in ("classification", "retrieval", "captioning") if have[TASK_NEEDS[task]]}
        if not tasks:
            raise ValueError(f"no row of the {len(dataset)} training rows has a caption or a labelled text: nothing "
                             "to train (check --caption_column, --text_column and --label_column)")
        return tasks
    tasks = {task.strip() for task in requested.split(",") if task.strip()}
    unknown = tasks - set(TASKS)
    if unknown or not tasks or {"classification", "vqa"} <= tasks:
        raise ValueError(f"--tasks {requested}: choose from {', '.join(TASKS)} (or auto); classification and vqa "
                         f"share one classifier, so not both; unknown: {sorted(unknown)}")
    missing = [task for task in sorted(tasks) if not have[TASK_NEEDS[task]]]
    if missing:
        found = ", ".join(f"{have[name]} with a {name}" for name in ("statement", "question", "caption"))
        raise ValueError(f"--tasks {requested}: no training row has a target for {', '.join(missing)} "
                         f"(of {len(dataset)} rows: {found}; a statement is a text with a label). Drop the task "
                         "from --tasks or point --caption_column / --text_column / --label_column at the data")
    return tasks


def usable_rows(dataset, task: str, counter: BadRowCounter):
    """The rows of `dataset` that carry at least one target of the collator `task`; the others are counted in
    `counter` by reason and dropped before training, so epochs have a known length."""
    keep = []
    for index, row in enumerate(_text_rows(dataset)):
        if row_targets(row, task):
            keep.append(index)
        else:
            counter.add(f"no target for the task ({missing_target_reason(row, task)})", str(row.get("image_id", index)))
    return dataset if len(keep) == len(dataset) else dataset.select(keep)
