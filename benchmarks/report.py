"""The report: each section's rows (its module's `rows`) in one markdown table under the machine line, and several
runs' reports merged into one."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import (
    finetune,
    fusion,
    generation,
    inference,
    photo_cache,
    precision,
    rerank_batch,
    retrieval,
    step_profile,
    training,
)
from modeling_xattn.training.metrics import markdown_table

# The sections in the table's order (the order the figures are read in, not the order they run in).
TABLE = {"fusion": fusion, "generation": generation, "retrieval": retrieval, "training": training,
         "precision": precision, "finetune": finetune, "step_profile": step_profile, "photo_cache": photo_cache,
         "rerank_batch": rerank_batch, "inference": inference}
# Every figure's target, as the report's JSON records them.
TARGETS = {
    "fusion": fusion.TARGET,
    "generation": generation.TARGET,
    "generation_static": generation.TARGET_STATIC,
    "training": training.TARGET_GPU,
    "retrieval": retrieval.TARGET,
    "mfu": training.TARGET_MFU,
    "memory": training.TARGET_MEMORY,
    "rerank_batch": rerank_batch.TARGET,
}


def markdown(report: dict) -> str:
    rows = [row for name, section in TABLE.items() if name in report["results"]
            for row in section.rows(report["results"][name])]
    columns = ["figure", "measured", "ratio", "target"]
    table = markdown_table([dict(zip(columns, row)) for row in rows], columns)
    return f"Machine: {report['machine']}. Command: `{report['command']}`.\n\n{table}\n"


def combine(paths: list[str], output_dir: str) -> dict:
    """One report from several runs' benchmark.json: their results side by side, one table per run."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    report = {"machine": runs[0]["machine"], "runs": runs}
    (output / "benchmark.json").write_text(json.dumps(report, indent=2))
    (output / "benchmark.md").write_text("\n".join(markdown(run) for run in runs))
    return report
