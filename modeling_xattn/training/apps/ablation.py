"""The paper's ablation study behind `scripts/ablation.py` (its docstring has the commands): each configuration
trained with the same seed, data and budget through `main.train`, evaluated with `evaluation`, and
summarised as a table (mean ± std over seeds), a bar chart and every run's validation curves against the step.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from modeling_xattn.training.data.relations import KINDS, SUBTYPES
from modeling_xattn.training.data.schema import BadRowCounter, undecoded
from modeling_xattn.training.data.sources import load_split, relation_spec
from modeling_xattn.training.diagnostic import answer_baselines, evaluate_relations
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
# (header, where the value is in a run's results): with --top_k > 0 the recall columns are two-stage (re-ranked by the
# matching head) and the "embeddings" columns the first stage alone; the ITM columns are the matching head against
# each photo's hardest other caption.
COLUMNS = [("CIDEr", ("captioning", "CIDEr")), ("BLEU-4", ("captioning", "BLEU-4")),
           ("METEOR", ("captioning", "METEOR")), ("i→t R@1", ("retrieval", "i2t_R@1")),
           ("i→t R@5", ("retrieval", "i2t_R@5")), ("i→t R@10", ("retrieval", "i2t_R@10")),
           ("t→i R@1", ("retrieval", "t2i_R@1")), ("t→i R@5", ("retrieval", "t2i_R@5")),
           ("t→i R@10", ("retrieval", "t2i_R@10")), ("embeddings i→t R@10", ("retrieval", "embedding_i2t_R@10")),
           ("embeddings t→i R@10", ("retrieval", "embedding_t2i_R@10")),
           ("ITM accuracy", ("retrieval", "itm_accuracy")), ("ITM AUC", ("retrieval", "itm_auc")),
           ("accuracy", ("classification", "accuracy"))]
HEADERS = [header for header, _ in COLUMNS]
# The relational diagnostic's table (--dataset relations, diagnostic.evaluate_relations): answer accuracy by kind and
# subtype, the pointing game's best layer and its chance, the matching head against the flipped twins, and retrieval
# of the true relation statements two-stage and by the embeddings alone.
RELATION_COLUMNS = [
    ("all", ("relations", "accuracy", "all")), ("non-relational", ("relations", "accuracy", "non-relational")),
    ("relational", ("relations", "accuracy", "relational")),
    *((subtype, ("relations", "accuracy", subtype)) for kind in KINDS for subtype in SUBTYPES[kind]),
    ("pointing (best layer)", ("relations", "pointing_best")), ("pointing chance", ("relations", "pointing_chance")),
    ("ITM true > reversed", ("relations", "matching", "true over reversed")),
    ("ITM true > swapped", ("relations", "matching", "true over swapped")),
    ("i→t R@1", ("retrieval", "i2t_R@1")), ("embeddings i→t R@1", ("retrieval", "embedding_i2t_R@1")),
    ("steps", ("train_steps",)), ("minutes", ("train_minutes",))]


def lookup(result: dict, path: tuple):
    """The value at `path` in a run's results, or None."""
    for key in path:
        if not isinstance(result, dict) or key not in result:
            return None
        result = result[key]
    return result


@dataclass
class AblationArguments:
    """The ablation's own options (the train.py options of every configuration follow `--`)."""

    _argument_group_name = "ablation"

    output_dir: str = option("outputs/ablation")
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "one run per configuration and seed"})
    configurations: list[str] = field(default_factory=lambda: list(CONFIGURATIONS),
                                      metadata={"choices": list(CONFIGURATIONS)})
    seeded_configurations: list[str] | None = field(
        default=None, metadata={"choices": list(CONFIGURATIONS),
                                "help": "the configurations run with every seed of --seeds; the others run with the "
                                        "first seed only (default: every configuration with every seed)"})
    equal_steps: bool = option(
        False, "then train every configuration again for the full model's steps (its mean over seeds) into "
        "OUTPUT_DIR/equal_steps, so configurations of different speeds are compared at equal time and at equal steps")
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
    trained = json.loads((folder / "train_results.json").read_text())
    tasks = set(trained["card"]["tasks"].split(","))
    result = evaluate_model(model, processor, test_data, tasks, 64, args.num_beams, 30, args.top_k,
                            java=not args.no_java, progress=not args.no_progress, counter=BadRowCounter(),
                            rerank_score=args.rerank_score)
    if args.dataset == "relations":
        result["relations"] = evaluate_relations(model, processor, test_data, progress=not args.no_progress,
                                                 grid=args.relations_grid)
    result["train_steps"] = trained["global_step"]
    result["train_minutes"] = trained["train_seconds"] / 60
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


def summarise(runs: dict[str, list[dict]], columns=COLUMNS) -> tuple[str, dict]:
    """Markdown table, rows = configurations, cells = mean (± std over seeds), '–' where a task does not apply."""
    rows, summary = [], {}
    headers = [header for header, _ in columns]
    for name, results in runs.items():
        cells, summary[name] = [], {}
        for header, path in columns:
            values = [value for value in (lookup(r, path) for r in results) if value is not None]
            if not values:
                cells.append("–")
                continue
            mean = statistics.mean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            summary[name][header] = {"mean": mean, "std": std, "values": values}
            scale = 100 if path[0] == "captioning" else 1  # caption metrics shown x100, as papers print them
            digits = 2 if path[-1] == "itm_auc" else 0 if path[-1] == "train_steps" else 1  # a ROC AUC in [0, 1]
            cells.append(f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if len(values) > 1 else ""))
        rows.append(dict(zip(["configuration", *headers], [name, *cells])))
    return markdown_table(rows, ["configuration", *headers]), summary


def bar_chart(summary: dict, path: str, headers=HEADERS):
    plt = pyplot()

    headers = [h for h in headers if h not in ("steps", "minutes") and any(h in s for s in summary.values())]
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


def seeds_of(args, name: str) -> list[int]:
    """The seeds configuration `name` runs with: every seed, or the first alone where --seeded_configurations
    leaves it out."""
    seeded = args.seeded_configurations
    return list(args.seeds) if seeded is None or name in seeded else list(args.seeds[:1])


def study(args, extra, test_data, budget: str) -> tuple[dict, str]:
    """Train and evaluate every configuration with its seeds under `args`' budget; write the table, the JSON, the
    chart and the curves into `args.output_dir`. Returns the runs by configuration and the summary (`summarise`)."""
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    runs = {name: [] for name in args.configurations}
    for seed in args.seeds:
        for name in args.configurations:
            if seed in seeds_of(args, name):
                torch.manual_seed(seed)
                runs[name].append(run_configuration(name, seed, args, extra, test_data))
    relations = args.dataset == "relations"
    columns = RELATION_COLUMNS if relations else COLUMNS
    table, summary = summarise(runs, columns)
    steps = ", ".join(f"{name} " + " / ".join(str(run["train_steps"]) for run in results) for name, results in runs.items())
    seeds = "; ".join(f"{name}: {seeds_of(args, name)}" for name in args.configurations)
    units = ("Accuracy, pointing and matching in %, mean ± std over seeds." if relations
             else "Caption metrics x100, recall in %.")
    header = (f"Ablation on {args.dataset_name or args.dataset} ({args.split} split, {len(test_data)} rows), seeds "
              f"({seeds}), {budget} per configuration (steps, by seed: {steps}). {units}\n\n")
    if relations:
        header += relation_baselines(args, test_data) + "\n\n"
    Path(args.output_dir, "ablation.md").write_text(header + table + "\n", encoding="utf-8")
    Path(args.output_dir, "ablation.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=2))
    bar_chart(summary, str(Path(args.output_dir, "ablation.png")), [header for header, _ in columns])
    plot_ablation_curves(histories(args), str(Path(args.output_dir, "ablation_curves.png")))
    print(header + table)
    return runs, summary


def relation_baselines(args, test_data) -> str:
    """The diagnostic's baselines per subtype beside its chance rate (diagnostic.answer_baselines), as a table."""
    train_rows = load_split(args, "train").remove_columns("image")
    found = answer_baselines(train_rows, test_data.remove_columns("image"), relation_spec(args))
    order = [subtype for kind in KINDS for subtype in SUBTYPES[kind] if subtype in found]
    rows = [{"baseline": name, **{subtype: f"{found[subtype][key]:.1f}" for subtype in order}}
            for name, key in (("chance", "chance"), ("question only", "question_only"),
                              ("most frequent answer", "prior"))]
    return ("Baselines on the same rows (%): chance, the most frequent training answer of each question text (what "
            "the question alone allows) and the most frequent training answer overall (what a model that cannot "
            "tell the questions apart allows).\n\n" + markdown_table(rows, ["baseline", *order]))


def main(argv=None, description: str | None = None):
    """Train and evaluate every configuration for each of its seeds; write the table, the JSON and the charts. With
    --equal_steps, again at the full model's step count, into OUTPUT_DIR/equal_steps. Returns the summary of the
    first study (equal time, or the steps given)."""
    args, extra = parse_args(argv, description)
    test_data = undecoded(load_split(args, args.split))
    budget = f"{args.max_steps} steps" if args.max_steps else f"{args.max_train_minutes} training minutes"
    runs, summary = study(args, extra, test_data, budget)
    if args.equal_steps:
        reference = runs.get("full model") or next(iter(runs.values()))
        steps = round(statistics.mean(run["train_steps"] for run in reference))
        again = dataclasses.replace(args, max_steps=steps, output_dir=str(Path(args.output_dir, "equal_steps")),
                                    equal_steps=False)
        study(again, extra, test_data, f"{steps} steps (the full model's mean at equal time)")
    return summary
