"""A new task through the registries alone: a toy head registered on the model, its `Task` in the training library's
registry, then trained, evaluated and saved by the same code that serves the paper's tasks (README, Contributing)."""

import json

import pytest
import torch
from torch import nn

from conftest import TINY_RUN, load_script
from modeling_xattn import XAttnForMultiTask, XAttnProcessor, register_head
from modeling_xattn import modeling_xattn as modeling
from modeling_xattn.training import tasks as task_registry
from modeling_xattn.training.data.schema import BadRowCounter
from modeling_xattn.training.evaluation import evaluate_model
from modeling_xattn.training.tasks import LossWeight, Task, register_task


class ParityHead(nn.Module):
    """The toy head: is the statement's class label even? A linear layer on the pooled fused statement."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, 2)

    def forward(self, pooled, labels=None):
        logits = self.dense(pooled)
        if labels is None:
            return logits, None
        known = labels != -100  # (class ids: this toy reads no VQA scores)
        losses = nn.functional.cross_entropy(logits.float(), torch.where(known, labels % 2, 0), reduction="none")
        return logits, (losses * known).sum() / known.sum().clamp(min=1)  # over the labelled rows; 0 with none


def score_parity(model, processor, rows, settings, counter, outputs) -> dict:
    """The toy task's evaluator, with the one signature every evaluator has; nothing for a model without the head."""
    if getattr(model, "parity", None) is None:
        return {}
    batch = processor(images=list(rows["image"]), text=list(rows["text"]), padding=True, return_tensors="pt")
    with torch.inference_mode():
        logits = model(**batch).logits_parity
    truth = torch.tensor(rows["label"]) % 2
    return {"parity_accuracy": 100.0 * float((logits.argmax(-1) == truth).float().mean()), "rows": len(rows)}


PARITY = Task("parity", target="statement", head="parity", losses=("loss_parity",),
              weights=(LossWeight("lambda_parity"),), metrics=("parity_accuracy",), validation=(),
              hub_task="text-classification", hub_name="Label parity", pipeline="image-text-classification",
              pipeline_input='{"image": "photo.jpg", "text": "a statement"}', auto=False, evaluate=score_parity)


@pytest.fixture
def parity_task():
    """The toy task and head, registered for one test and then removed, so no other test sees them."""
    register_head("parity", ParityHead)
    register_task(PARITY)
    yield PARITY
    del task_registry.REGISTRY["parity"], modeling.STATEMENT_HEADS["parity"], modeling.HEAD_LOSS_WEIGHTS["parity"]
    for keys in (modeling.XAttnPreTrainedModel._keys_to_ignore_on_load_missing,
                 modeling.XAttnPreTrainedModel._keys_to_ignore_on_load_unexpected):
        keys.remove(r"^parity\.")


def test_a_task_registered_alone_trains_evaluates_and_saves(parity_task, tmp_path):
    folder = tmp_path / "parity"
    load_script("train").main([*TINY_RUN, "--max_steps", "6", "--tasks", "parity", "--output_dir", str(folder)])

    config = json.loads((folder / "config.json").read_text())
    assert config["lambda_parity"] == 1.0 and config["lambda_ce"] == 0.0  # Formula 4: only the task trained
    history = json.loads((folder / "history.json").read_text())
    assert history[-1]["train_loss_parity"] == history[-1]["train_loss"]  # its loss alone was trained and logged
    assert "val_loss_parity" in history[-1] and "val_accuracy" not in history[-1]  # validated; the classifier not

    model = XAttnForMultiTask.from_pretrained(folder).eval()
    assert isinstance(model.parity, ParityHead)
    trained = {k: v for k, v in model.state_dict().items() if k.startswith("parity.")}
    from safetensors.torch import load_file

    saved = load_file(folder / "model.safetensors")
    assert trained and all(torch.equal(saved[k], v) for k, v in trained.items())  # its weights were saved

    from modeling_xattn.training.data.sources import load_split
    from modeling_xattn.training.options import DataOptions

    rows = load_split(DataOptions(dataset="synthetic", synthetic_samples=60, synthetic_test_samples=12), "test")
    results = evaluate_model(model, XAttnProcessor.from_pretrained(folder), rows, tasks=("parity",),
                             progress=False, counter=BadRowCounter())
    assert set(results) == {"parity"} and results["parity"]["rows"] == 12
    assert 0.0 <= results["parity"]["parity_accuracy"] <= 100.0

    card = (folder / "README.md").read_text()
    assert "tasks trained: parity" in card


def test_a_registered_head_weighs_its_loss_by_its_lambda(parity_task):
    from modeling_xattn import XAttnConfig

    torch.manual_seed(0)
    config = XAttnConfig.from_preset("tiny", lambda_ce=0.0, lambda_parity=0.5)
    model = XAttnForMultiTask(config).eval()
    inputs = dict(pixel_values=torch.randn(2, 3, config.image_size, config.image_size),
                  input_ids=torch.randint(5, 50, (2, 6)), labels=torch.tensor([1, 2]))
    out = model(**inputs)
    assert out.loss_ce is None and torch.allclose(out.loss, 0.5 * out.loss_parity)
    assert out.logits_parity.shape == (2, 2)


def test_a_registered_head_leaves_batches_without_statements_alone(parity_task):
    """A caption-only batch (no statements) trains the other heads as before: no logits or loss of the new head, and
    a batch of statements none of which is labelled gives it a loss of 0, not NaN."""
    from modeling_xattn import XAttnConfig

    torch.manual_seed(0)
    config = XAttnConfig.from_preset("tiny")
    model = XAttnForMultiTask(config).train()
    pixels = torch.randn(2, 3, config.image_size, config.image_size)
    out = model(pixel_values=pixels, caption_input_ids=torch.randint(5, 50, (2, 6)))
    assert "logits_parity" not in out and "loss_parity" not in out and torch.isfinite(out.loss)
    out = model(pixel_values=pixels, input_ids=torch.randint(5, 50, (2, 6)), labels=torch.tensor([-100, -100]))
    assert out.loss_parity == 0 and out.logits_parity.shape == (2, 2)


def test_a_task_is_weighed_by_the_lambdas_of_its_losses(parity_task):
    import dataclasses

    with pytest.raises(ValueError, match="lambda_parity2"):
        register_task(dataclasses.replace(PARITY, name="parity2", losses=("loss_parity2",)))


def test_task_and_head_names_are_taken_once(parity_task):
    with pytest.raises(ValueError, match="parity"):
        register_task(PARITY)
    with pytest.raises(ValueError, match="classifier"):
        modeling.register_head("classifier", ParityHead)
