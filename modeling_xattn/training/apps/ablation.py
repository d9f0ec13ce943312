"""The paper's ablation study behind `scripts/ablation.py` (its docstring has the commands): each configuration
trained with the same seed, data and budget through `main.train`, evaluated with `evaluation`, and
summarised as a table (mean ± std over seeds), a bar chart and every run's validation curves against the step.
"""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from modeling_xattn.training.data.schema import BadRowCounter, undecoded
from modeling_xattn.training.data.sources import load_split
from modeling_xattn.training.evaluation import evaluate_model
from modeling_xattn.training.inference import load_model
from modeling_xattn.training.metrics import markdown_table
from modeling_xattn.training.main import parse_args as parse_train_args
from modeling_xattn.training.main import train
from modeling_xattn.training.options import DataArguments, StreamingArguments, data_options, option, parse_merged
from modeling_xattn.training.plots import plot_ablation_curves, pyplot

CONFIGURATIONS = {
    "full model": [],
    "w/o cross-attention": ["--fusion_type", "concat"],
    "w/o CBAM": ["--no_cbam"],
    "visual features only": ["--modalities", "image"],
    "text features only": ["--modalities", "text"],
}
COLUMNS = [("captioning", "CIDEr"), ("captioning", "BLEU-4"), ("captioning", "METEOR"),
           ("retrieval", "i2t_R@1"), ("retrieval", "i2t_R@5"), ("retrieval", "i2t_R@10"),
           ("retrieval", "t2i_R@1"), ("retrieval", "t2i_R@5"), ("retrieval", "t2i_R@10"),
           ("retrieval", "embedding_i2t_R@10"), ("retrieval", "embedding_t2i_R@10"), ("retrieval", "itm_accuracy"),
           ("retrieval", "itm_auc"), ("classification", "accuracy")]
# With --top_k > 0 the recall columns are two-stage (re-ranked by the matching head) and the "embeddings" columns the
# first stage alone; the ITM columns are the matching head against each photo's hardest other caption.
HEADERS = ["CIDEr", "BLEU-4", "METEOR", "i→t R@1", "i→t R@5", "i→t R@10", "t→i R@1", "t→i R@5", "t→i R@10",
           "embeddings i→t R@10", "embeddings t→i R@10", "ITM accuracy", "ITM AUC", "accuracy"]


@dataclass
class AblationArguments:
    """The ablation's own options (the train.py options of every configuration follow `--`)."""

    _argument_group_name = "ablation"

    output_dir: str = option("outputs/ablation")
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "one run per configuration and seed"})
    configurations: list[str] = field(default_factory=lambda: list(CONFIGURATIONS),
                                      metadata={"choices": list(CONFIGURATIONS)})
    tasks: str = option("auto", "as train.py's --tasks (auto: every task the data has)")
    split: Literal["validation", "test"] = option("test", "the split to evaluate on")
    top_k: int = option(128, "retrieval shortlist re-ranked by the matching score (0: rank by the embeddings alone)")
    rerank_score: Literal["itm", "itm+similarity"] = option("itm+similarity", "as evaluate.py's --rerank_score")
    max_train_minutes: float = option(3.5, "training budget of each configuration")
    max_steps: int | None = option(None, "step budget of each configuration (instead of minutes)")
    test_samples: int = option(500, "rows of the embedded dataset's test split")
    num_beams: int = option(3)
    no_java: bool = option(False)
    no_progress: bool = option(False)
    overwrite_output_dir: bool = option(
        False, "retrain every configuration (default: one already evaluated is kept, an unfinished one resumes)")


@dataclass
class AblationOptions(AblationArguments, DataArguments, StreamingArguments):
    """Every option of the ablation: its own and the data's."""

    def __post_init__(self):
        self.synthetic_test_samples = self.test_samples  # the test split the configurations are evaluated on


def parse_args(argv=None, description: str | None = None) -> tuple[AblationOptions, list[str]]:
    """The ablation's options, and the train.py options given after `--`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    options = parse_merged(AblationOptions, (AblationArguments, DataArguments, StreamingArguments), argv,
                           description or __doc__)
    return options, extra


def data_arguments(args) -> list[str]:
    """Every data option (`DataOptions`), passed on to training unchanged so every configuration trains on
    the rows it is evaluated against (the test split's size is this job's own `--test_samples`)."""
    out = []
    for name in vars(data_options()):
        value = getattr(args, name)
        if value is None or value is False or name == "synthetic_test_samples":
            continue
        out += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return out


def run_configuration(name, seed, args, extra, test_data) -> dict:
    """Train and evaluate one configuration into its own folder. A folder whose evaluation finished is kept (its
    `test_results.json` is the result) and one whose training did not finish resumes from its latest checkpoint,
    so an interrupted study loses no finished work; `--overwrite_output_dir` retrains."""
    folder = run_folder(args, name, seed)
    if (folder / "test_results.json").exists() and not args.overwrite_output_dir:
        print(f"{name}, seed {seed}: kept the finished run in {folder} (--overwrite_output_dir retrains it)")
        return json.loads((folder / "test_results.json").read_text())
    budget = ["--max_steps", str(args.max_steps)] if args.max_steps else ["--max_train_minutes", str(args.max_train_minutes), "--num_epochs", "1000"]
    again = ["--overwrite_output_dir"] if args.overwrite_output_dir else ["--resume_from_checkpoint", "latest"]
    train(parse_train_args(data_arguments(args) + CONFIGURATIONS[name] + budget + [
        "--seed", str(seed), "--tasks", args.tasks, "--output_dir", str(folder), "--report_to", "none",
        "--no_progress"] + again + extra))
    model, processor = load_model(str(folder))
    tasks = set(json.loads((folder / "train_results.json").read_text())["card"]["tasks"].split(","))
    result = evaluate_model(model, processor, test_data, tasks, 64, args.num_beams, 30, args.top_k,
                            java=not args.no_java, progress=not args.no_progress, counter=BadRowCounter(),
                            rerank_score=args.rerank_score)
    result["train_steps"] = json.loads((folder / "train_results.json").read_text())["global_step"]
    (folder / "test_results.json").write_text(json.dumps(result, indent=2))
    return result


def run_folder(args, name: str, seed: int) -> Path:
    """The folder one configuration's run trains into: `{output_dir}/{name}-seed{seed}`."""
    return Path(args.output_dir) / f"{name.replace(' ', '_').replace('/', '')}-seed{seed}"


def histories(args) -> dict[str, list[tuple[int, list[dict]]]]:
    """Every run's training history (history.json: the losses, the validation metrics and the gates by step), by
    configuration: what ablation_curves.png draws."""
    found = {}
    for name in args.configurations:
        for seed in args.seeds:
            path = run_folder(args, name, seed) / "history.json"
            if path.exists():
                found.setdefault(name, []).append((seed, json.loads(path.read_text())))
    return found


def summarise(runs: dict[str, list[dict]]) -> tuple[str, dict]:
    """Markdown table, rows = configurations, cells = mean (± std over seeds), '–' where a task does not apply."""
    rows, summary = [], {}
    for name, results in runs.items():
        cells, summary[name] = [], {}
        for (task, metric), header in zip(COLUMNS, HEADERS):
            values = [r[task][metric] for r in results if metric in r.get(task, {})]
            if not values:
                cells.append("–")
                continue
            mean = statistics.mean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[name][header] = {"mean": mean, "std": std, "values": values}
            scale = 100 if task == "captioning" else 1  # caption metrics shown x100, as papers print them
            digits = 2 if metric == "itm_auc" else 1  # a ROC AUC in [0, 1]
            cells.append(f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if len(values) > 1 else ""))
        rows.append(dict(zip(["configuration", *HEADERS], [name, *cells])))
    return markdown_table(rows, ["configuration", *HEADERS]), summary


def bar_chart(summary: dict, path: str):
    plt = pyplot()

    headers = [h for h in HEADERS if any(h in s for s in summary.values())]
    figure, axes = plt.subplots(1, len(headers), figsize=(3.2 * len(headers), 3.6), squeeze=False)
    for ax, header in zip(axes[0], headers):
        names = [n for n in summary if header in summary[n]]
        means = [summary[n][header]["mean"] for n in names]
        stds = [summary[n][header]["std"] for n in names]
        ax.bar(range(len(names)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(names)), [n.replace(" ", "\n", 1) for n in names], fontsize=7)
        ax.set_title(header)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None, description: str | None = None):
    """Train and evaluate every configuration for every seed; write the table, the JSON and the chart."""
    args, extra = parse_args(argv, description)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    test_data = undecoded(load_split(args, args.split))
    runs = {name: [] for name in args.configurations}
    for seed in args.seeds:
        for name in args.configurations:
            torch.manual_seed(seed)
            runs[name].append(run_configuration(name, seed, args, extra, test_data))
    table, summary = summarise(runs)
    budget = f"{args.max_steps} steps" if args.max_steps else f"{args.max_train_minutes} training minutes"
    steps = ", ".join(f"{name} " + " / ".join(str(run["train_steps"]) for run in results) for name, results in runs.items())
    header = (f"Ablation on {args.dataset_name or args.dataset} ({args.split} split, {len(test_data)} rows), seeds "
              f"{args.seeds}, {budget} per configuration (steps, by seed: {steps}). Caption metrics x100, recall in %.\n\n")
    Path(args.output_dir, "ablation.md").write_text(header + table + "\n", encoding="utf-8")
    Path(args.output_dir, "ablation.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    bar_chart(summary, str(Path(args.output_dir, "ablation.png")))
    plot_ablation_curves(histories(args), str(Path(args.output_dir, "ablation_curves.png")))
    print(header + table)
    return summary


