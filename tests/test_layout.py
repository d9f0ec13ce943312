"""The package's shape: the Hub model apart from the training library, dependencies pointing one way, no cycle.

Read from the source (AST), so a function-local import counts like any other: it cannot hide a cycle."""

import ast
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "modeling_xattn"
HUB_FILES = ("configuration_xattn", "modeling_xattn", "processing_xattn", "pipeline_xattn")

# Each module's layer: a module may import from its own layer or a lower one, never a higher one.
LAYERS = {
    0: ["modeling_xattn", *(f"modeling_xattn.{name}" for name in HUB_FILES)],  # what ships next to the weights
    1: ["modeling_xattn.training.data.vqa", "modeling_xattn.training.data.schema", "modeling_xattn.training.data.synthetic",
        "modeling_xattn.training.data.relations",
        "modeling_xattn.training.data.options", "modeling_xattn.training.data.views", "modeling_xattn.training.distributed",
        "modeling_xattn.training.options", "modeling_xattn.training.compilation", "modeling_xattn.training.sharding",
        "modeling_xattn.training.backbones", "modeling_xattn.training.gallery", "modeling_xattn.training.towers",
        "modeling_xattn.training.tasks"],
    2: ["modeling_xattn.training.data.shards", "modeling_xattn.training.data.sources",
        "modeling_xattn.training.data.streaming", "modeling_xattn.training.collate"],
    3: ["modeling_xattn.training.metrics", "modeling_xattn.training.caption_metric", "modeling_xattn.training.hub",
        "modeling_xattn.training.inference",
        "modeling_xattn.training.plots", "modeling_xattn.training.optimization", "modeling_xattn.training.checkpoints",
        "modeling_xattn.training.logs"],
    4: ["modeling_xattn.training.evaluation", "modeling_xattn.training.publishing",
        "modeling_xattn.training.diagnostic"],
    5: ["modeling_xattn.training.loop"],
    6: ["modeling_xattn.training.main"],
    7: [f"modeling_xattn.training.apps.{name}" for name in ("ablation", "demo", "evaluate",
                                                              "export_densenet", "make_shards", "predict",
                                                              "push_to_hub", "visualize")],
}
RANK = {module: rank for rank, modules in LAYERS.items() for module in modules}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every package module `path` imports, at the top or inside a function, absolute or relative."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            modules = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found |= {m for m in modules if m.startswith("modeling_xattn") and module_path(m)}
    return found - {name}


def module_path(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_layer():
    unplaced = sorted(module for module in graph() if module not in RANK and not module.endswith((".training",
                                                                                               ".data", ".apps")))
    assert not unplaced, f"place these modules in a layer of LAYERS: {unplaced}"


def test_dependencies_point_down_the_layers():
    upward = [(module, target) for module, targets in graph().items() for target in targets
              if module in RANK and target in RANK and RANK[target] > RANK[module]]
    assert not upward, f"imports from a higher layer: {upward}"


# What the data layer (modeling_xattn/training/data/) may import besides itself: the Hub files and the collectives
# helper (torch only). Its options and batch targets are its own, so nothing above it is needed to read data.
DATA_LAYER = "modeling_xattn.training.data"
DATA_MAY_IMPORT = {"modeling_xattn", *(f"modeling_xattn.{name}" for name in HUB_FILES),
                   "modeling_xattn.training.distributed"}


def test_the_data_layer_imports_nothing_above_it():
    outside = sorted((module, target) for module, targets in graph().items() if module.startswith(DATA_LAYER)
                     for target in targets if not target.startswith(DATA_LAYER) and target not in DATA_MAY_IMPORT)
    assert not outside, f"the data layer imports from above it: {outside}"


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle a depth-first walk of `edges` closes, each as the modules along it."""
    state, stack, cycles = {}, [], []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module)
    return cycles


def test_no_import_cycle():
    cycles = find_cycles(graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_hub_files_import_only_each_other():
    for name in HUB_FILES:
        path = PACKAGE / f"{name}.py"
        outside = {m for m in imports_of(path) if m.rpartition(".")[2] not in HUB_FILES}
        assert not outside, f"{path.name} imports {outside}: custom code on the Hub cannot import them"


def test_scripts_import_no_script():
    for path in (ROOT / "scripts").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        siblings = {p.stem for p in (ROOT / "scripts").glob("*.py")}
        assert not {n.split(".")[0] for n in names} & (siblings | {"scripts"}), path.name


def test_the_cycle_check_finds_a_cycle(tmp_path, monkeypatch):
    # the check itself can fail: two modules importing each other, one of them inside a function
    package = tmp_path / "modeling_xattn"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("def f():\n    from modeling_xattn.a import y\n")
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "ROOT", tmp_path)
    monkeypatch.setattr(this, "PACKAGE", package)
    assert graph()["modeling_xattn.b"] == {"modeling_xattn.a"}
    assert find_cycles(graph()) == [["modeling_xattn.a", "modeling_xattn.b", "modeling_xattn.a"]]


# --------------------------------------------------------------------------------------------- the task registry


def test_each_script_calls_the_app_of_its_own_name():
    for script in sorted((ROOT / "scripts").glob("*.py")):
        apps = {module for module in imports_of(script) if module.startswith("modeling_xattn.training.apps.")}
        # train.py calls the loop; benchmark.py the benchmarks, which live outside the package
        expected = set() if script.stem in ("train", "benchmark") else {f"modeling_xattn.training.apps.{script.stem}"}
        assert apps == expected, script.name


def test_the_benchmarks_stay_outside_the_package():
    """benchmarks/ is a developer's tool beside the package: nothing installed imports it, and the wheel leaves it
    out (pyproject's package list names modeling_xattn only)."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(name.split(".")[0] == "benchmarks" for name in names), path
    assert 'include = ["modeling_xattn*"]' in (ROOT / "pyproject.toml").read_text()


def test_every_task_is_declared_once_and_matches_the_model():
    import dataclasses

    from modeling_xattn import XAttnConfig, XAttnForMultiTask
    from modeling_xattn.modeling_xattn import HEAD_LOSS_WEIGHTS, XAttnMultiTaskOutput
    from modeling_xattn.pipeline_xattn import PIPELINES
    from modeling_xattn.training.data.schema import BATCH_TARGETS
    from modeling_xattn.training.tasks import REGISTRY, check_weights, evaluated_tasks, loss_keys

    config = XAttnConfig.from_preset("tiny")
    model = XAttnForMultiTask(config)
    outputs = {field.name for field in dataclasses.fields(XAttnMultiTaskOutput)}
    for name, task in REGISTRY.items():
        assert task.head in HEAD_LOSS_WEIGHTS and isinstance(getattr(model, task.head), torch.nn.Module), name
        assert set(task.losses) <= outputs, name
        assert all(isinstance(getattr(config, weight), float) for weight in task.weight_names), name
        assert set(task.weight_names) <= set(HEAD_LOSS_WEIGHTS[task.head]), name  # the weights its head reports
        check_weights(task)  # each loss weighed by the lambda of its name
        assert any(task.target in targets for targets in BATCH_TARGETS.values()), name
        assert task.target in BATCH_TARGETS and task.pipeline in PIPELINES, name  # a batch of it alone; its pipeline
    assert set(HEAD_LOSS_WEIGHTS) == {task.head for task in REGISTRY.values()}  # every head serves a task
    assert set(loss_keys()) == {field for field in outputs if field.startswith("loss_")}  # every loss has its task
    assert evaluated_tasks() == ("classification", "retrieval", "captioning", "vqa")
    assert all(callable(REGISTRY[name].evaluator()) for name in evaluated_tasks())  # every evaluator resolves
    from modeling_xattn.training.metrics import CAPTION_METRICS

    assert REGISTRY["captioning"].metrics == REGISTRY["captioning"].validation == CAPTION_METRICS  # what the toolkit gives


def test_the_batches_of_a_run_carry_the_targets_of_its_tasks():
    from modeling_xattn.training.tasks import batch_targets

    assert batch_targets({"classification"}) == "statement"
    assert batch_targets({"retrieval"}) == batch_targets({"captioning", "retrieval"}) == "caption"
    assert batch_targets({"classification", "captioning"}) == "statement+caption"
    assert batch_targets({"vqa"}) == "question" and batch_targets({"vqa", "retrieval"}) == "question+caption"
    with pytest.raises(ValueError, match="no batch serves"):
        batch_targets({"classification", "vqa"})


def test_a_run_weighs_only_the_losses_of_its_tasks():
    from modeling_xattn.training.tasks import loss_weights

    given = {"lambda_ce": 2.0, "lambda_cl": 3.0, "lambda_itm": 4.0, "lambda_seq": 5.0}
    assert loss_weights({"captioning"}, given) == {"lambda_ce": 0.0, "lambda_cl": 0.0, "lambda_itm": 0.0,
                                                    "lambda_seq": 5.0}
    assert loss_weights({"retrieval", "vqa"}, given) == {"lambda_ce": 2.0, "lambda_cl": 3.0, "lambda_itm": 4.0,
                                                         "lambda_seq": 0.0}


def test_no_function_of_the_training_library_is_longer_than_80_lines():
    long = []
    for path in (PACKAGE / "training").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, f"split these into phases: {long}"


