"""Push to and pull from a Hub-protocol test double on 127.0.0.1 with the real huggingface_hub and transformers
clients; safe-loading refusals."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import load_script, slow
from hub_server import serve
from safetensors.torch import save_file

from modeling_xattn.training.hub import UnsafeCheckpointError, check_safe, load_pretrained

REPO = Path(__file__).resolve().parents[1]
train = load_script("train")
evaluation = load_script("evaluate")
DATA = ["--synthetic_samples", "60", "--synthetic_test_samples", "16"]


@pytest.fixture(scope="module")
def hub():
    server, state, endpoint = serve()
    yield state, endpoint
    server.shutdown()


@pytest.fixture(scope="module")
def trained(trained_copy):
    folder = trained_copy
    evaluation.main(["--model", str(folder), "--split", "test", "--no_progress", "--num_beams", "1",
                     "--max_new_tokens", "5", "--top_k", "4", *DATA])
    return folder


def client_env(endpoint, home):
    return {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
            "HF_TOKEN": "hf_test_token", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_VERBOSITY": "error"}


def push(folder, repo_id, endpoint, home, *extra):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "push_to_hub.py"), "--folder", str(folder),
                             "--repo_id", repo_id, *extra], capture_output=True, text=True, timeout=300,
                            env=client_env(endpoint, home), cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    commit = re.search(r"at commit ([0-9a-f]{40})", result.stdout).group(1)
    assert f'revision="{commit}"' in result.stdout
    return commit, result.stdout


PULL = textwrap.dedent("""
    import sys, torch
    sys.modules["modeling_xattn"] = None   # only the repository's own code may load
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForPreTraining, AutoProcessor
    repo, revision, inputs_file, out_file = sys.argv[1:5]
    model = AutoModelForPreTraining.from_pretrained(repo, trust_remote_code=True, revision=revision).eval()
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True, revision=revision)
    inputs = load_file(inputs_file)
    text = processor(text=["there is a red shape and a blue shape", "a blue square"])
    with torch.no_grad():
        logits = model(pixel_values=inputs["pixel_values"], **text).logits
        captions = model.generate(inputs["pixel_values"], max_new_tokens=5)
    save_file({"logits": logits, "captions": captions.contiguous(), **{k: v for k, v in text.items()}}, out_file)
""")


@slow
def test_push_then_pull_a_pinned_revision(hub, trained, tmp_path):
    state, endpoint = hub
    commit, _ = push(trained, "user/xattn-tiny", endpoint, tmp_path / "push_home")
    repo = state.repos["user/xattn-tiny"]
    files = repo.commits[commit].files
    assert {"model.safetensors", "config.json", "modeling_xattn.py", "configuration_xattn.py", "processing_xattn.py",
            "processor_config.json", "tokenizer.json", "README.md"} <= set(files)
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    config = json.loads(files["config.json"])
    assert config["auto_map"]["AutoModelForPreTraining"] == "modeling_xattn.XAttnForMultiTask"
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: transformers") and "model-index:" in card
    assert "name: CIDEr" in card and "name: accuracy" in card and "$" + "model_index" not in card
    assert "user/xattn-tiny" in card and 'revision="<commit>"' in card

    # a second push without changes makes no new commit
    commits_before = len(repo.commits)
    again, output = push(trained, "user/xattn-tiny", endpoint, tmp_path / "push_home")
    assert again == commit and len(repo.commits) == commits_before

    # a fresh process with an empty cache loads the pinned revision through the custom code
    pixels = torch.rand(2, 3, 64, 64)
    save_file({"pixel_values": pixels}, str(tmp_path / "inputs.safetensors"))
    (tmp_path / "pull.py").write_text(PULL)
    result = subprocess.run([sys.executable, "pull.py", "user/xattn-tiny", commit, "inputs.safetensors", "out.safetensors"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in client_env(endpoint, tmp_path / "empty_home").items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-3000:]
    from safetensors.torch import load_file

    got = load_file(str(tmp_path / "out.safetensors"))
    model = load_pretrained(str(trained)).eval()
    with torch.no_grad():
        text = {"input_ids": got["input_ids"], "attention_mask": got["attention_mask"]}
        assert torch.equal(model(pixel_values=pixels, **text).logits, got["logits"])
        assert torch.equal(model.generate(pixels, max_new_tokens=5), got["captions"])


@slow
def test_wrong_revision_fails_clearly(hub, trained, tmp_path):
    state, endpoint = hub
    push(trained, "user/xattn-rev", endpoint, tmp_path / "home")
    (tmp_path / "pull.py").write_text(PULL)
    save_file({"pixel_values": torch.rand(1, 3, 64, 64)}, str(tmp_path / "inputs.safetensors"))
    result = subprocess.run([sys.executable, "pull.py", "user/xattn-rev", "0" * 40, "inputs.safetensors", "o.safetensors"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env=client_env(endpoint, tmp_path / "empty"))
    assert result.returncode != 0
    assert re.search(r"Revision|revision", result.stderr) and "0" * 40 in result.stderr


@slow
def test_push_to_a_branch_and_as_a_pull_request(hub, trained, tmp_path):
    state, endpoint = hub
    main_commit, _ = push(trained, "user/xattn-pr", endpoint, tmp_path / "home")
    branch_commit, _ = push(trained, "user/xattn-pr", endpoint, tmp_path / "home", "--revision", "dev",
                            "--commit_message", "to dev")
    repo = state.repos["user/xattn-pr"]
    assert repo.refs["dev"] == branch_commit and repo.refs["main"] == main_commit
    changed = tmp_path / "changed"
    import shutil

    shutil.copytree(trained, changed)
    results = json.loads((changed / "eval_results.json").read_text())
    results["split"] = "validation"  # a different model card, so the pull request has something to change
    (changed / "eval_results.json").write_text(json.dumps(results))
    _, output = push(changed, "user/xattn-pr", endpoint, tmp_path / "home", "--create_pr", "--commit_message", "a PR")
    assert "pull request" in output and any(ref.startswith("refs/pr/") for ref in repo.refs)


def test_pickled_weights_are_refused_unless_opted_in(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xattn"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(UnsafeCheckpointError, match="pickled weights"):
        load_pretrained(str(tmp_path))
    check_safe(str(tmp_path), allow_pickle=True)  # the caller took responsibility
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    check_safe(str(tmp_path))  # safetensors present: only they are loaded


def test_cross_repository_auto_map_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "xattn", "auto_map": {"AutoModel": "evil/repo--modeling_evil.Model"}}))
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(UnsafeCheckpointError, match="another repository"):
        load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "xattn"}))
    (tmp_path / "processor_config.json").write_text(json.dumps(
        {"auto_map": {"AutoProcessor": "evil/repo--processing.P"}}))
    with pytest.raises(UnsafeCheckpointError, match="processor_config.json"):
        check_safe(str(tmp_path))


def test_train_pushes_when_asked(hub, tmp_path, monkeypatch):
    state, endpoint = hub
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    result = train.main(DATA + ["--vocab_size", "120", "--max_steps", "1", "--batch_size", "8", "--report_to", "none",
                                "--no_progress", "--output_dir", str(tmp_path), "--push_to_hub", "--hub_model_id",
                                "user/from-train"])
    repo = state.repos["user/from-train"]
    assert repo.refs["main"] == result["pushed"]["commit"]
    assert "model.safetensors" in repo.commits[result["pushed"]["commit"]].files


@slow
def test_tracker_logs_are_pushed_only_when_asked(hub, tmp_path):
    state, endpoint = hub
    folder = tmp_path / "model"
    train.main(DATA + ["--vocab_size", "120", "--max_steps", "1", "--batch_size", "8", "--no_progress",
                       "--output_dir", str(folder)])  # the default tracker writes under runs/
    assert list((folder / "runs").rglob("events.out.tfevents*"))
    commit, _ = push(folder, "user/no-logs", endpoint, tmp_path / "home")
    files = state.repos["user/no-logs"].commits[commit].files
    assert "model.safetensors" in files and not [f for f in files if f.startswith(("runs/", "checkpoints/"))]
    commit, _ = push(folder, "user/with-logs", endpoint, tmp_path / "home", "--include_logs")
    files = state.repos["user/with-logs"].commits[commit].files
    assert [f for f in files if f.startswith("runs/") and "events.out.tfevents" in f]
    assert not [f for f in files if f.startswith("checkpoints/")]
