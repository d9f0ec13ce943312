"""The report: each section's rows (its module's `rows`) in one markdown table under the machine line, and several
runs' reports merged into one."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.sections import MODULES, TABLE
from modeling_xattn.training.metrics import markdown_table

# Every figure's target, as the report's JSON records them.
TARGETS = {
    "fusion": MODULES["fusion"].TARGET,
    "generation": MODULES["generation"].TARGET,
    "generation_static": MODULES["generation"].TARGET_STATIC,
    "training": MODULES["training"].TARGET_GPU,
    "retrieval": MODULES["retrieval"].TARGET,
    "mfu": MODULES["training"].TARGET_MFU,
    "memory": MODULES["training"].TARGET_MEMORY,
    "rerank_batch": MODULES["rerank_batch"].TARGET,
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
