"""scripts/gpu_figures.sh, the one prepared run of the GPU figures, at its smoke sizes on this machine: every figure
it promises is in its report, each run's table under the machine line with the versions. No test asserts a time."""

import json
import os
import subprocess
import sys
from pathlib import Path
from conftest import slow

pytestmark = slow  # every test here launches processes

REPO = Path(__file__).resolve().parents[1]


def test_gpu_figures_script_runs_at_smoke_sizes(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu_figures.sh"), "--smoke"], cwd=REPO, capture_output=True,
                            text=True, timeout=1200, env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable,
                                 # dynamo's eager backend: the compiled variant is traced, not built (the GPU run
                                 # uses inductor)
                                 "COMPILE_BACKEND": "eager"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    bf16, fp32 = report["runs"]
    assert "--precision bf16" in bf16["command"] and "--precision fp32" in fp32["command"]
    assert set(bf16["results"]) == {"training", "precision", "finetune", "generation", "retrieval", "rerank_batch"}
    assert set(fp32["results"]) == {"training", "generation"}
    training = bf16["results"]["training"]
    assert any(name.startswith("compiled") for name in training["variants"])  # eager vs torch.compile
    assert training["memory"]["default"]["peak_bytes"] > 0
    for name in ("greedy", "beam3"):
        assert fp32["results"]["generation"][name]["identical_static"] is True  # the same tokens in fp32
        assert "tokens_per_s_static" in bf16["results"]["generation"][name]
    retrieval = bf16["results"]["retrieval"]
    assert {"two_stage_i2t", "two_stage_t2i", "exhaustive"} <= set(retrieval)
    assert bf16["results"]["finetune"]["samples_per_s"] > 0
    assert bf16["results"]["rerank_batch"]["fastest"] in {int(k) for k in bf16["results"]["rerank_batch"]["pairs_per_s"]}
    table = (tmp_path / "benchmark.md").read_text()
    assert table.count("Machine: ") == 2 and "transformers 5." in table and "fine-tuning step" in table
