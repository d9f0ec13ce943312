"""Fine-tuning from pretrained towers, the way a user runs it: `train.py --recipe finetune` through towers in their
published formats (an ALBERT folder with albert-base-v2's exact configuration, its weights laid out as the Hub's
AlbertForMaskedLM checkpoint with the pooler, and a tokenizer; a DenseNet121 state dict written by
scripts/export_densenet.py), the traps a user falls into (each one plain message naming the option), BatchNorm
statistics of a locked tower, and the reload where the package cannot be imported.

The weights are random (nothing downloads here), the layouts and shapes are the published ones."""

import json
import os
import subprocess
import sys
import textwrap
import urllib.error

import pytest
import torch
import torchvision
from conftest import load_script, slow
from safetensors.torch import load_file, save_file
from transformers import AlbertConfig, AlbertForMaskedLM, AutoTokenizer, BertConfig, BertModel

from modeling_xattn import XAttnConfig, XAttnForMultiTask, train_albert_tokenizer
from modeling_xattn.training.backbones import from_pretrained_backbones, load_densenet_features
from modeling_xattn.training.data.synthetic import synthetic_dataset
from modeling_xattn.training.main import cpu_has_bf16, cpu_precision

train = load_script("train")
export_densenet = load_script("export_densenet")

# albert-base-v2's config.json as the Hub publishes it
ALBERT_BASE_V2 = {
    "architectures": ["AlbertForMaskedLM"], "attention_probs_dropout_prob": 0, "bos_token_id": 2,
    "classifier_dropout_prob": 0.1, "down_scale_factor": 1, "embedding_size": 128, "eos_token_id": 3, "gap_size": 0,
    "hidden_act": "gelu_new", "hidden_dropout_prob": 0, "hidden_size": 768, "initializer_range": 0.02,
    "inner_group_num": 1, "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "model_type": "albert", "net_structure_type": 0, "num_attention_heads": 12, "num_hidden_groups": 1,
    "num_hidden_layers": 12, "num_memory_blocks": 0, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": 30000,
}
SMALL_ALBERT = dict(ALBERT_BASE_V2, embedding_size=16, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                    num_hidden_layers=2, vocab_size=600)
QUICK = ["--synthetic_samples", "24", "--batch_size", "2", "--max_steps", "2", "--report_to", "none", "--no_progress"]


def corpus():
    rows = synthetic_dataset(40)
    return [r["text"] for r in rows] + [c for r in rows for c in r["captions"]]


def albert_folder(path, config: dict, tokenizer_size: int | None = 500):
    """An ALBERT checkpoint laid out as the Hub's albert-base-v2: `config.json` as published, `model.safetensors`
    with AlbertForMaskedLM's keys (`albert.*`, `predictions.*`) and the pooler, and a tokenizer in ALBERT's format."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(0)
    model = AlbertForMaskedLM(AlbertConfig(**config))
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    hidden = config["hidden_size"]
    state["albert.pooler.weight"], state["albert.pooler.bias"] = torch.randn(hidden, hidden) * 0.02, torch.zeros(hidden)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer_size:
        train_albert_tokenizer(corpus(), vocab_size=tokenizer_size).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("towers")
    densenet = root / "densenet121.safetensors"
    export_densenet.main(["--weights", "random", "--output", str(densenet)])
    return {"albert": albert_folder(root / "albert-base-v2", ALBERT_BASE_V2), "densenet": densenet,
            "small_albert": albert_folder(root / "small-albert", SMALL_ALBERT)}


CHILD = textwrap.dedent(
    """
    import sys
    sys.modules["modeling_xattn"] = None  # only the folder's own code may load it
    import torch
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor

    folder, albert_file = sys.argv[1:3]
    albert = {k[len("albert."):]: v for k, v in load_file(albert_file).items()
              if k.startswith("albert.") and not k.startswith("albert.pooler.")}
    model = AutoModelForPreTraining.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    for tower in (model.xattn.text_model, base.text_model):
        state = tower.state_dict()
        assert all(torch.equal(state[k], v) for k, v in albert.items()), "ALBERT changed"
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=[Image.new("RGB", (80, 60), (30, 120, 200))], text=["a blue square"])
    with torch.no_grad():
        assert model(**inputs).logits.shape == (1, 3)
        assert model.generate(inputs["pixel_values"], max_new_tokens=3).shape[0] == 1
    print("reloaded", type(model).__module__)
    """
)


@slow
def test_finetune_recipe_from_published_towers_keeps_locked_towers_exact(towers, tmp_path, capfd):
    out = tmp_path / "run"
    result = train.main(["--recipe", "finetune", "--text_backbone", str(towers["albert"]), "--vision_backbone",
                         str(towers["densenet"]), "--freeze_text", "--freeze_vision", "--image_size", "64",
                         *QUICK, "--output_dir", str(out)])
    assert result["global_step"] == 2
    printed = "".join(capfd.readouterr())
    assert "LOAD REPORT" not in printed and "UNEXPECTED" not in printed  # the pretraining heads are expected
    assert "warning: the pretrained" not in printed  # the recipe gives the towers their own rate
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["hidden_size"] == 768 and config["block_config"] == [6, 12, 24, 16]
    assert config["image_size"] == 64  # an explicit option overrides the recipe's 224
    saved = load_file(str(out / "model.safetensors"))
    densenet = load_file(str(towers["densenet"]))
    features = [k for k in densenet if k.startswith("features.")]
    assert any(k.endswith("running_mean") for k in features)
    for key in features:  # weights and BatchNorm statistics, exactly as the file holds them
        assert torch.equal(saved[f"xattn.vision_model.{key}"], densenet[key]), key
    albert = load_file(str(towers["albert"] / "model.safetensors"))
    for key, value in albert.items():
        if key.startswith("albert.") and not key.startswith("albert.pooler."):
            assert torch.equal(saved["xattn.text_model." + key[len("albert."):]], value), key
    results = json.loads((out / "train_results.json").read_text())
    # a CPU run of the base preset takes bf16 autocast where the CPU has it (measured 1.8x faster there)
    assert results["launch"]["mixed_precision"] == ("bf16" if cpu_has_bf16() else "no")
    card = results["card"]["training"]
    assert "recipe finetune" in card and "cosine" in card
    assert f"ALBERT from {towers['albert']} (locked)" in card
    assert f"DenseNet from {towers['densenet']} (locked, BatchNorm statistics included)" in card
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), str(towers["albert"] / "model.safetensors")],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    assert child.returncode == 0, child.stderr[-3000:]
    assert "reloaded transformers_modules" in child.stdout


def test_a_densenet121_file_with_a_small_preset_names_the_preset(towers, tmp_path):
    with pytest.raises(SystemExit, match=r"holds DenseNet121 .* but --model_size tiny builds .*use --model_size base"):
        train.main(["--vision_backbone", str(towers["densenet"]), *QUICK, "--output_dir", str(tmp_path)])


def test_a_small_densenet_file_with_the_finetune_recipe_names_the_preset(towers, tmp_path):
    small = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2)
    save_file(small.state_dict(), str(tmp_path / "small.safetensors"))
    with pytest.raises(SystemExit, match=r"but --model_size base builds DenseNet121 .*use --model_size tiny"):
        train.main(["--recipe", "finetune", "--text_backbone", str(towers["albert"]), "--vision_backbone",
                    str(tmp_path / "small.safetensors"), *QUICK, "--output_dir", str(tmp_path / "run")])


def test_a_text_checkpoint_that_is_not_albert_is_refused(tmp_path):
    BertModel(BertConfig(vocab_size=600, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    with pytest.raises(SystemExit, match="is a bert checkpoint, not ALBERT"):
        train.main(["--text_backbone", str(tmp_path / "bert"), *QUICK, "--output_dir", str(tmp_path / "run")])


def test_a_tokenizer_larger_than_the_text_tower_is_refused(towers, tmp_path):
    tower = albert_folder(tmp_path / "albert-20", dict(SMALL_ALBERT, vocab_size=20), tokenizer_size=None)
    with pytest.raises(SystemExit, match=r"--tokenizer .* has \d+ tokens, but --text_backbone .* embeds 20: "):
        train.main(["--text_backbone", str(tower), "--tokenizer", str(towers["small_albert"]), *QUICK,
                    "--output_dir", str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="holds no tokenizer that loads.*give --tokenizer"):
        train.main(["--text_backbone", str(tower), *QUICK, "--output_dir", str(tmp_path / "run2")])


@slow
def test_unreachable_towers_say_how_to_bring_them(tmp_path, monkeypatch):
    # a Hub id where the Hub cannot be reached (offline mode, as on this machine)
    command = [sys.executable, str(train.__file__), "--recipe", "finetune", *QUICK, "--output_dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--text_backbone albert/albert-base-v2 could not be read" in result.stderr
    assert "hf download albert/albert-base-v2" in result.stderr
    # torchvision's ImageNet download failing
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torchvision.models, "densenet121", offline)
    with pytest.raises(SystemExit, match=r"could not be loaded: .*no route to host.*scripts/export_densenet.py"):
        train.main(["--model_size", "base", "--vision_backbone", "imagenet", *QUICK,
                    "--output_dir", str(tmp_path / "imagenet")])


def test_pretrained_towers_at_the_new_layers_rate_are_warned_about(towers, tmp_path, capsys):
    train.main(["--text_backbone", str(towers["small_albert"]), *QUICK, "--max_steps", "1",
                "--output_dir", str(tmp_path / "warned")])
    printed = capsys.readouterr().out
    assert "warning: the pretrained ALBERT trains at --learning_rate 0.001" in printed
    # the tower's own tokenizer is smaller than its 600 embeddings: captions never hold the ids it cannot decode
    tokens = len(AutoTokenizer.from_pretrained(towers["small_albert"]))
    assert f"has {tokens:,} tokens and --text_backbone" in printed
    generation = json.loads((tmp_path / "warned" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(tokens, 600))
    train.main(["--text_backbone", str(towers["small_albert"]), "--backbone_learning_rate", "1e-5", *QUICK,
                "--max_steps", "1", "--output_dir", str(tmp_path / "quiet")])
    assert "warning: the pretrained" not in capsys.readouterr().out


def test_published_albert_folder_loads_quietly_and_whole(towers, capfd):
    model = from_pretrained_backbones(XAttnForMultiTask, XAttnConfig.from_preset("tiny"),
                                         text=str(towers["small_albert"]))
    printed = "".join(capfd.readouterr())
    assert "LOAD REPORT" not in printed and "Loading weights" not in printed
    assert model.config.text_config.hidden_size == 32 and model.config.decoder_config.vocab_size == 600


def test_old_torchvision_key_names_are_read(tmp_path):
    """torchvision's original DenseNet files name a dense layer's parts `norm.1`, `conv.2`, ...; they load too."""
    densenet = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2)
    old = {}
    for key, value in densenet.state_dict().items():
        for part in ("norm1", "norm2", "conv1", "conv2", "relu1", "relu2"):
            key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        old[key] = value
    assert any(".norm.1." in key for key in old)
    save_file(old, str(tmp_path / "old.safetensors"))
    features = load_densenet_features(str(tmp_path / "old.safetensors"))
    assert set(features) == set(densenet.features.state_dict())


def _train_steps(model, steps=3):
    from conftest import make_batch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for seed in range(steps):
        batch = make_batch(model.config, batch_size=4, seed=seed)
        batch["pixel_values"] = batch["pixel_values"] * 3 + 1  # statistics far from a fresh BatchNorm's 0 / 1
        model(**batch, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()  # an evaluation in between, as the loop does: train() after it must not unfreeze
        model.train()


def _densenet_state(model):
    return {k: v.clone() for k, v in model.xattn.vision_model.features.state_dict().items()}


def test_a_locked_image_tower_keeps_its_weights_and_batch_norm_statistics():
    torch.manual_seed(0)
    model = XAttnForMultiTask(XAttnConfig.from_preset("tiny")).lock_image_tower()
    before = _densenet_state(model)
    cbam = model.xattn.vision_model.cbam.spatial_conv.weight.clone()
    _train_steps(model)
    after = _densenet_state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # running_mean/var, num_batches_tracked included
    assert not torch.equal(cbam, model.xattn.vision_model.cbam.spatial_conv.weight)  # CBAM still trains


def test_frozen_batch_norm_statistics_while_the_tower_trains():
    torch.manual_seed(0)
    model = XAttnForMultiTask(XAttnConfig.from_preset("tiny")).freeze_image_batch_norm()
    before = _densenet_state(model)
    _train_steps(model)
    after = _densenet_state(model)
    statistics = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics and all(torch.equal(before[k], after[k]) for k in statistics)
    assert not torch.equal(before["conv0.weight"], after["conv0.weight"])  # the weights train
    assert not torch.equal(before["norm0.weight"], after["norm0.weight"])  # and BatchNorm's scale too


def test_without_freezing_the_statistics_move():
    """The drift the locks prevent: a tower whose BatchNorm trains moves its running statistics in a few steps."""
    torch.manual_seed(0)
    model = XAttnForMultiTask(XAttnConfig.from_preset("tiny"))
    model.xattn.vision_model.features.requires_grad_(False)  # requires_grad alone is not a lock
    before = _densenet_state(model)
    _train_steps(model)
    assert (_densenet_state(model)["norm0.running_mean"] - before["norm0.running_mean"]).abs().max() > 0.1


def test_a_cpu_run_takes_bf16_only_for_the_base_preset():
    assert cpu_precision("tiny") == cpu_precision("small") == (None, None)
    assert cpu_precision("base")[0] == ("bf16" if cpu_has_bf16() else None)


def test_a_recipe_tower_turns_off_and_options_that_cannot_hold_stop(towers, tmp_path):
    options = train.parse_args(["--recipe", "finetune", "--text_backbone", "none", "--vision_backbone", "None"])
    assert options.text_backbone is None and options.vision_backbone is None and options.model_size == "base"
    with pytest.raises(SystemExit, match="--text_backbone .* is given, but --modalities image has no such tower"):
        train.main(["--text_backbone", str(towers["small_albert"]), "--modalities", "image", *QUICK,
                    "--output_dir", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="--logging_steps 0: give 1 or more"):
        train.main([*QUICK, "--logging_steps", "0", "--output_dir", str(tmp_path / "b")])
