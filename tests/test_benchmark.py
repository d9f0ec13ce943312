"""scripts/benchmark.py at smoke sizes: every section runs and reports what it claims. No test asserts a time."""

import json

import pytest
from conftest import load_script, slow

from benchmarks import common, memory, options

benchmark = load_script("benchmark")  # the command line; its figures come from the benchmarks/ modules


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("benchmark")
    # every section but finetune, which trains the base preset (tests/test_gpu_figures.py runs it)
    sections = ",".join(name for name in options.SECTIONS if name != "finetune")
    result = benchmark.main(["--smoke", "--sections", sections, "--output_dir", str(folder)])
    return folder, result


@slow
def test_fusion_is_compared_at_matched_compute(report):
    _, result = report
    fusion = result["results"]["fusion"]
    # Matched sub-layers: the same FLOPs; LXMERT shares its cross-attention between directions, we do not.
    assert fusion["flops"]["ours"] == fusion["flops"]["lxmert"] > 0
    assert fusion["parameters"]["ours"] > fusion["parameters"]["lxmert"]


def test_generation_cache_gives_identical_outputs(report):
    generation = report[1]["results"]["generation"]
    for name in ("greedy", "beam3"):
        assert generation[name]["identical_outputs"] is True
        assert generation[name]["new_tokens"] == 6  # min_new_tokens = max_new_tokens
        assert generation[name]["identical_static"] is True  # static cache: the dynamic cache's tokens


def test_retrieval_counts_pair_evaluations(report):
    retrieval = report[1]["results"]["retrieval"]
    images, captions, k = 12, 60, 4  # smoke gallery: 12 images x 5 captions, shortlist 4
    assert retrieval["exhaustive"]["pair_evaluations"] == images * captions
    assert retrieval["two_stage_i2t"]["pair_evaluations"] == images * k
    assert retrieval["two_stage_t2i"]["pair_evaluations"] == captions * k
    for direction, queries in (("i2t", images), ("t2i", captions)):
        hits = retrieval[f"two_stage_{direction}"][f"{direction}_R@1"] * queries / 100  # a percentage of the queries
        assert abs(hits - round(hits)) < 1e-6 and 0 <= round(hits) <= queries


@slow
def test_on_a_machine_that_runs_every_flop_alike_the_figures_are_flop_ratios(monkeypatch, tmp_path):
    """An injected timer: each measured call "takes" its FLOPs (torch's counter) at 1 GFLOP/s. Then the fusion ratio
    is the FLOP ratio (1: matched compute), the MFU of a training step is exactly 100%, and re-ranking saves time in
    proportion to the pairs it skips. A wrong FLOP count, batch size or division in the report breaks these."""
    rate = 1e9

    def fake_measure(fn, device, repeats, warmup):
        seconds = common.count_flops(fn) / rate
        return {"median_s": seconds, "times_s": [seconds]}

    monkeypatch.setattr(common, "measure", fake_measure)  # every section times through common.measure
    results = benchmark.main(["--smoke", "--sections", "fusion,retrieval,training,precision", "--output_dir",
                              str(tmp_path)])["results"]
    precision = results["precision"]["tiny_batch2"]  # bf16 and channels-last do the same arithmetic: ratio 1
    for ratio in ("bf16_vs_fp32", "bf16_channels_last_vs_fp32", "fp32_channels_last_vs_fp32"):
        assert precision[ratio] == pytest.approx(1.0)
    assert results["fusion"]["ratio"] == pytest.approx(1.0)
    training = results["training"]
    assert training["matmul_flops_per_s"] == pytest.approx(rate)
    assert training["mfu"] == pytest.approx(1.0, rel=1e-6)
    assert training["samples_per_s"] * training["model_flops_per_sample"] == pytest.approx(rate, rel=1e-6)
    retrieval = results["retrieval"]
    for direction in ("i2t", "t2i"):
        pair_ratio = retrieval["exhaustive"]["pair_evaluations"] / retrieval[f"two_stage_{direction}"]["pair_evaluations"]
        assert 0.8 * pair_ratio < retrieval[f"two_stage_{direction}"]["time_ratio"] <= pair_ratio
        chosen = retrieval[f"chosen_k_{direction}"]
        assert chosen["k"] in chosen["R@1_by_k"] and chosen["R@1_difference"] >= -1.0
    # reusing the first layer's projections of each image saves arithmetic when images recur across the pairs
    # (text->image: every caption shortlists some of the 12 images)
    assert retrieval["chosen_k_t2i"]["reuse_speedup"] > 1
    assert "| 1.00x |" in (tmp_path / "benchmark.md").read_text()  # the fusion row shows the injected ratio


def test_training_and_inference_figures(report):
    results = report[1]["results"]
    training = results["training"]
    assert training["model_flops_per_sample"] > 0
    for mode in ("default", "saving"):
        assert training["memory"][mode]["peak_bytes"] > 0
    inference = results["inference"]
    assert {"batch1_default", "batch4_default", "batch1_channels_last", "batch4_channels_last"} <= set(inference)
    precision = results["precision"]["tiny_batch2"]
    assert {"fp32_contiguous", "fp32_channels_last", "bf16_contiguous", "bf16_channels_last"} <= set(precision)
    assert all(precision[name]["samples_per_s"] > 0 for name in ("fp32_contiguous", "bf16_contiguous"))


def test_json_and_markdown_are_written(report):
    folder, result = report
    saved = json.loads((folder / "benchmark.json").read_text())
    assert saved["results"].keys() == result["results"].keys()
    table = (folder / "benchmark.md").read_text()
    assert "| fusion fwd+bwd vs LxmertXLayer |" in table and saved["machine"] in table


@slow
def test_memory_probe_reports_its_own_peak_not_its_parents():
    # Linux carries ru_maxrss over from a parent at fork and exec; the probe must report the child's own peak.
    # Make this process's resident memory far larger than a tiny probe needs, then probe.
    import torch

    ballast = torch.ones(3 * 2**30 // 4)  # 3 GiB, touched
    args = options.parse_args(["--smoke", "--device", "cpu"])
    probe = memory.run_probe(args, "default")
    assert memory.current_rss_bytes() > 3 * 2**30 > probe["peak_bytes"] >= probe["model_ready_bytes"] > 0
    del ballast
