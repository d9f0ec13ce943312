"""The multi-task training step under torch.compile: one graph for every task subset a run can select (no graph
break, counted by `torch._dynamo.explain`), the same losses and gradients as eager, and a compiled run's graph
budget (nothing recompiles after the first evaluation)."""

import json

import pytest
import torch

from conftest import free_port, load_script, slow
from modeling_xattn import XAttnConfig, XAttnForMultiTask
from modeling_xattn.training import loop
from modeling_xattn.training.compilation import compiled_graphs
from modeling_xattn.training.tasks import loss_keys, loss_weights

pytestmark = slow  # every test here launches processes or compiles

train = load_script("train")

# every set of tasks `--tasks` accepts (vqa trains on the classifier, so never beside classification)
SUBSETS = [("classification",), ("retrieval",), ("captioning",), ("classification", "retrieval"),
           ("classification", "captioning"), ("retrieval", "captioning"), ("classification", "retrieval", "captioning"),
           ("vqa",), ("vqa", "captioning")]
ANSWERS = 6


def model_for(tasks) -> XAttnForMultiTask:
    weights = loss_weights(tasks, {"lambda_ce": 1.0, "lambda_cl": 1.0, "lambda_itm": 1.0, "lambda_seq": 1.0})
    vqa = {"num_labels": ANSWERS, "problem_type": "multi_label_classification"} if "vqa" in tasks else {}
    torch.manual_seed(0)
    return XAttnForMultiTask(XAttnConfig.from_preset("tiny", **weights, **vqa)).train()


def partly_labelled_batch(config, tasks, size=4, text_length=7, caption_length=9):
    """A batch as the collator makes it for `tasks`, in which row 1 has no label and row 2 no caption (the masks the
    step must handle without a branch), and rows 1 and 2 share a photo."""
    generator = torch.Generator().manual_seed(0)
    vocab = config.text_config.vocab_size
    batch = {"pixel_values": torch.randn(size, 3, config.image_size, config.image_size, generator=generator),
             "image_ids": torch.tensor([10, 11, 11, 12])}
    if {"classification", "vqa"} & set(tasks):
        batch["input_ids"] = torch.randint(5, vocab, (size, text_length), generator=generator)
        batch["attention_mask"] = torch.ones(size, text_length, dtype=torch.long)
        if "vqa" in tasks:
            batch["labels"] = torch.rand(size, ANSWERS, generator=generator)
        else:
            batch["labels"] = torch.randint(0, config.num_labels, (size,), generator=generator)
        batch["labels"][1] = -100
    else:
        batch["labels"] = torch.full((size,), -100)  # the collator always sends labels
    if {"retrieval", "captioning"} & set(tasks):
        batch["caption_input_ids"] = torch.randint(5, vocab, (size, caption_length), generator=generator)
        mask = torch.ones(size, caption_length, dtype=torch.long)
        mask[0, 6:] = 0  # padding
        mask[2] = 0  # no caption
        batch["caption_attention_mask"] = mask
    return batch


def losses_and_gradients(model, run, batch):
    torch.manual_seed(1)  # dropout and the matching negatives' draw
    out = run(**batch)
    out.loss.backward()
    losses = {key: getattr(out, key).detach() for key in ("loss", *loss_keys()) if getattr(out, key) is not None}
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return losses, gradients


def assert_same_step(model, batch, compiled):
    eager_losses, eager_gradients = losses_and_gradients(model, model, batch)
    losses, gradients = losses_and_gradients(model, compiled, batch)
    assert losses.keys() == eager_losses.keys() and len(losses) > 1
    for key, value in eager_losses.items():
        assert torch.isfinite(value) and (losses[key] - value).abs().item() <= 1e-5, key
    assert gradients.keys() == eager_gradients.keys()
    for name, gradient in eager_gradients.items():
        torch.testing.assert_close(gradients[name], gradient, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("tasks", SUBSETS, ids="+".join)
def test_training_step_is_one_graph_with_eager_losses(tasks):
    model = model_for(tasks)
    batch = partly_labelled_batch(model.config, tasks)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(**batch)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    # no host synchronisation inside the step: no nonzero, no boolean-mask indexing, no .item()
    operations = {str(node.target) for graph in explained.graphs for node in graph.graph.nodes}
    assert not {op for op in operations if "nonzero" in op or op in ("item", "masked_select")}
    torch._dynamo.reset()
    # aot_eager traces forward and backward as the compiler sees them; inductor's C++ build is the test below
    assert_same_step(model, batch, torch.compile(model, fullgraph=True, backend="aot_eager"))


def test_inductor_step_matches_eager():
    """The default backend (inductor's generated C++ on the CPU) on every task at once. `fallback_random` makes
    inductor draw dropout and the matching negatives with eager's generator, so the two steps are comparable."""
    tasks = ("classification", "retrieval", "captioning")
    model = model_for(tasks)
    batch = partly_labelled_batch(model.config, tasks)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        assert_same_step(model, batch, torch.compile(model, fullgraph=True))


def test_compiled_run_stops_compiling_after_the_first_evaluation(tmp_path, monkeypatch):
    """Three epochs of one full batch each (the last short training batch is dropped), an evaluation after every
    step over 8 + 2 validation rows: training's graph, evaluation's (another mode: no dropout, the hardest negatives)
    and evaluation's short last batch are the run's three graphs; the second and third epochs and the later
    evaluations compile nothing."""
    counts = []

    def after_step(run):
        last = original(run)
        counts.append(compiled_graphs() - run.graphs_before)
        return last

    original = loop.after_step
    monkeypatch.setattr(loop, "after_step", after_step)
    torch._dynamo.reset()
    out = tmp_path / "compiled"
    train.main(["--synthetic_samples", "20", "--validation_fraction", "0.5", "--caption_sampling", "one_per_photo",
                "--batch_size", "8", "--vocab_size", "150", "--report_to", "none", "--no_progress",
                "--max_steps", "3", "--eval_steps", "1", "--output_dir", str(out),
                "--torch_compile", "--torch_compile_backend", "aot_eager"])
    results = json.loads((out / "train_results.json").read_text())
    assert results["global_step"] == 3 and results["compiled_graphs"] == 3
    assert counts == [3, 3, 3]


def test_step_is_one_graph_under_bf16_autocast():
    """What `--mixed_precision bf16` traces: autocast, and the fp32 blocks of the retrieval losses inside it."""
    tasks = ("classification", "retrieval", "captioning")
    model = model_for(tasks)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(**partly_labelled_batch(model.config, tasks))
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons


def test_two_processes_train_compiled(tmp_path):
    """`torchrun --nproc_per_node 2 scripts/train.py --torch_compile`: Accelerate compiles the DDP-wrapped model,
    whose forward dynamo splits at DDP's gradient buckets by design, so several processes compile without
    fullgraph (one process compiles with it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "ddp"
    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()),
               str(script), "--synthetic_samples", "40", "--batch_size", "4", "--vocab_size", "150", "--report_to",
               "none", "--no_progress", "--max_steps", "2", "--eval_steps", "2", "--output_dir", str(out),
               "--torch_compile", "--torch_compile_backend", "aot_eager"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.compile: aot_eager" in result.stdout and "weights identical on all 2 processes" in result.stdout
    assert json.loads((out / "train_results.json").read_text())["compiled_graphs"] >= 1
