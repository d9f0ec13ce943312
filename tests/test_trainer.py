"""Every model class trains under `transformers.Trainer` with `XAttnCollator`: losses are scaled right under gradient
accumulation, retrieval returns a loss when labels are given, and caption-only evaluation sets report `eval_loss`."""

import pytest
import torch
from transformers import Trainer, TrainingArguments

from modeling_xattn import (
    XAttnConfig,
    XAttnForConditionalGeneration,
    XAttnForImageTextRetrieval,
    XAttnForMultiTask,
    XAttnForSequenceClassification,
)
from modeling_xattn.training.collate import XAttnCollator
from modeling_xattn.training.data.synthetic import synthetic_dataset


def tiny(processor, **overrides):
    """The tiny preset without dropout, so that two runs over the same rows give the same gradients."""
    return XAttnConfig.from_preset(
        "tiny", text_config={"vocab_size": len(processor.tokenizer)}, hidden_dropout_prob=0.0, classifier_dropout=0.0,
        decoder_config={"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}, **overrides)


def frozen_batch_norm(model):
    """Keep DenseNet's BatchNorm layers in eval mode (Trainer calls model.train() every step): batch statistics of one
    batch of 8 and of two batches of 4 differ, which would make the gradients differ for a reason unrelated to
    accumulation."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
            module.train = lambda mode=True, module=module: module
    return model


def arguments(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True, remove_unused_columns=False,
                  save_strategy="no", logging_steps=1, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    values.update(overrides)
    return TrainingArguments(**values)


def sgd_step_gradient(model_class, config, dataset, collator, tmp_path, batch_size, accumulation):
    """-Δθ of one plain SGD step at learning rate 1 (no momentum, decay or clipping): the gradient Trainer applied."""
    torch.manual_seed(0)
    model = frozen_batch_norm(model_class(config))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = arguments(tmp_path, per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation,
                     max_steps=1, learning_rate=1.0, optim="sgd", weight_decay=0.0, max_grad_norm=0.0,
                     lr_scheduler_type="constant")
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator).train()
    return {name: before[name] - p.detach() for name, p in model.named_parameters()}


@pytest.mark.parametrize("model_class", [XAttnForMultiTask, XAttnForSequenceClassification])
def test_gradient_accumulation_gives_the_same_gradients(model_class, processor, tmp_path):
    dataset = synthetic_dataset(8, seed=3)  # one optimiser step sees all 8 rows either way
    collator = XAttnCollator(processor, targets="statement")
    config = tiny(processor)
    whole = sgd_step_gradient(model_class, config, dataset, collator, tmp_path / "a", batch_size=8, accumulation=1)
    halves = sgd_step_gradient(model_class, config, dataset, collator, tmp_path / "b", batch_size=4, accumulation=2)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in whole.values()))
    assert norm > 0
    for name, gradient in whole.items():
        torch.testing.assert_close(halves[name], gradient, atol=1e-5 * float(norm), rtol=1e-3, msg=name)


@pytest.mark.parametrize("model_class", [XAttnForImageTextRetrieval, XAttnForConditionalGeneration, XAttnForMultiTask])
def test_caption_models_train_and_report_eval_loss_on_caption_only_sets(model_class, processor, tmp_path):
    rows = synthetic_dataset(24, seed=4).remove_columns(["text", "label"])  # captions only, as COCO or Flickr
    train, evaluation = rows.select(range(16)), rows.select(range(16, 24))
    collator = XAttnCollator(processor, targets="caption", model=model_class)
    torch.manual_seed(0)
    model = model_class(tiny(processor))
    args = arguments(tmp_path, per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=2,
                     learning_rate=1e-3, eval_strategy="no")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, data_collator=collator)
    result = trainer.train()
    assert result.training_loss > 0 and torch.isfinite(torch.tensor(result.training_loss))
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0


def test_the_collator_takes_a_model_class_its_name_or_an_instance(processor):
    rows = list(synthetic_dataset(4, seed=5))
    batch = XAttnCollator(processor, targets="caption", model=XAttnForImageTextRetrieval)(rows)
    named = XAttnCollator(processor, targets="caption", model="XAttnForImageTextRetrieval")(rows)
    assert named.keys() == batch.keys() and all(torch.equal(named[key], batch[key]) for key in batch)
    instance = XAttnForImageTextRetrieval(tiny(processor))  # as transformers' collators take a model
    assert XAttnCollator(processor, targets="caption", model=instance).model == "XAttnForImageTextRetrieval"
    with pytest.raises(ValueError, match="model must be one of"):
        XAttnCollator(processor, model="retrieval")
    with pytest.raises(ValueError, match="lacks"):
        XAttnCollator(processor, targets="statement", model=XAttnForConditionalGeneration)


def test_retrieval_returns_a_loss_when_labels_are_given(processor):
    model = XAttnForImageTextRetrieval(tiny(processor)).eval()
    batch = XAttnCollator(processor, targets="caption", model="XAttnForImageTextRetrieval")(
        list(synthetic_dataset(4, seed=5)))
    with torch.no_grad():
        assert model(**batch).loss is not None
        unlabelled = {k: v for k, v in batch.items() if k != "labels"}
        assert model(**unlabelled).loss is None
        assert model(**unlabelled, return_loss=True).loss is not None


def test_readme_trainer_example_runs_on_a_folder_of_captioned_photos(tmp_path, monkeypatch):
    """The Trainer code of docs/pipelines.md, as written, on a folder of photos with captions only (train/ and validation/)."""
    import json
    import re
    from pathlib import Path

    import numpy as np
    from PIL import Image

    page = (Path(__file__).resolve().parents[1] / "docs" / "pipelines.md").read_text(encoding="utf-8")
    code = next(block for block in re.findall(r"```python\n(.*?)```", page, flags=re.S) if "Trainer(" in block)
    rng = np.random.default_rng(0)
    words = ["a dog runs on the grass", "two children play in the snow", "a man rides a red bike"]
    for split, count in (("train", 12), ("validation", 4)):
        folder = tmp_path / "photos" / split
        folder.mkdir(parents=True)
        with open(folder / "metadata.jsonl", "w") as metadata:
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
                row = {"file_name": f"{i}.jpg", "captions": [words[i % 3], words[(i + 1) % 3]]}
                metadata.write(json.dumps(row) + "\n")
    monkeypatch.chdir(tmp_path)
    code = code.replace("num_train_epochs=3", "num_train_epochs=1")  # one step is enough to show it runs
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 1
    first, second = trainer.evaluate()["eval_loss"], trainer.evaluate()["eval_loss"]
    assert first == second  # evaluation draws nothing at random: the matching negatives are the hardest ones
    from transformers import pipeline

    captioner = pipeline("image-to-text", model=str(tmp_path / "outputs/trainer/final"), trust_remote_code=True)
    assert isinstance(captioner(str(tmp_path / "photos/validation/0.jpg"))[0]["generated_text"], str)
