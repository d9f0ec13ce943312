"""The training job behind `scripts/train.py`: options, model and processor set-up, the Accelerate loop (exact
resume, DDP, Formula 5), the best/final folders and the model card. `scripts/train.py` and `scripts/ablation.py` call
`train(parse_args(argv))`; so can a notebook.

The loop runs on one process or several (`accelerate launch`, `torchrun`) alike; see `scripts/train.py` for the
commands.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DistributedType,
    GradientAccumulationPlugin,
    ProjectConfiguration,
    TorchDynamoPlugin,
    send_to_device,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from modeling_xattn.configuration_xattn import XAttnConfig
from modeling_xattn.modeling_xattn import XAttnForMultiTask
from modeling_xattn.processing_xattn import XAttnProcessor, train_albert_tokenizer
from modeling_xattn.training.checkpoints import (
    TrainingState,
    latest_checkpoint,
    list_checkpoints,
    quiet_tied_weights_notice,
    save_checkpoint_atomically,
    write_json,
)
from modeling_xattn.training.collate import PhotoCache, XAttnCollator
from modeling_xattn.training.compilation import compiled_graphs, is_compiled
from modeling_xattn.training.data.schema import (
    BATCH_TARGETS,
    BadRowCounter,
    answer_vocabulary,
    class_names,
    undecoded,
)
from modeling_xattn.training.data.sources import dataset_identity, load_split
from modeling_xattn.training.data.streaming import StreamingData
from modeling_xattn.training.data.views import CaptionPairs, CaptionPerPhoto, EpochSeeded, RandomResizedCrops
from modeling_xattn.training.distributed import any_process, slowest_clock
from modeling_xattn.training.evaluation import (
    EVALUATION_FILES,
    evaluate_multitask,
    validation_caption_metrics,
)
from modeling_xattn.training.logs import RunningLosses
from modeling_xattn.training.metrics import CAPTION_METRICS
from modeling_xattn.training.optimization import PreviousLossDecay, learning_rate_factor, parameter_groups
from modeling_xattn.training.options import TrainingOptions, parse_training_options
from modeling_xattn.training.plots import plot_training_curves
from modeling_xattn.training.publishing import build_card, push_folder
from modeling_xattn.training.sharding import (
    MODEL_FILE as SHARDED_MODEL_FILE,
    full_weights,
    is_sharded,
    load_sharded_state,
    save_sharded_state,
    scalar_shapes,
    shard_model,
    unsharded_shell,
    vectorize_scalars,
)
from modeling_xattn.training.tasks import (
    LOSS_WEIGHTS,
    REGISTRY,
    USAGE_ORDER,
    batch_kind,
    loss_weights,
    select_tasks,
    usable_rows,
)
from modeling_xattn.training.towers import (
    check_towers,
    describe_towers,
    hub_base_models,
    lock_towers,
    suppressed_caption_ids,
)

STREAM_EVALUATION_PERIOD = 1000  # with --streaming, --eval_steps 0 / --save_steps 0 mean every this many steps


def parse_args(argv=None, description: str | None = None) -> TrainingOptions:
    """The training options (`scripts/train.py --help` lists them, by group), typed, with the recipe's values filled
    in: what `train` takes."""
    return parse_training_options(argv, description or __doc__)


def build_processor(args, train_data, accelerator, tokenizer=None):
    """The processor: `tokenizer` (the one `--tokenizer` or `--text_backbone` names, loaded by `check_towers`), else
    one trained on the training rows' texts and captions."""
    if tokenizer is not None:
        return XAttnProcessor.build(tokenizer, image_size=_image_size(args))
    folder = Path(args.output_dir) / "tokenizer"
    if accelerator.is_main_process and not (folder / "tokenizer.json").exists():
        corpus = list(train_data["text"]) + [c for captions in train_data["captions"] for c in captions]
        words = dict(vocab_size=args.vocab_size) if args.vocab_size else dict(vocab_size=None,
                                                                               min_word_count=args.min_word_count)
        train_albert_tokenizer(corpus, **words).save_pretrained(folder)
    accelerator.wait_for_everyone()
    return XAttnProcessor.build(str(folder), image_size=_image_size(args))


def _image_size(args) -> int:
    return args.image_size or XAttnConfig.from_preset(args.model_size).image_size


def build_model(args, processor, tasks, label_names, answers=None):
    if answers:
        labels = dict(id2label=dict(enumerate(answers)), problem_type="multi_label_classification")
    else:
        labels = dict(id2label=dict(enumerate(label_names)))
    overrides = dict(
        fusion_type=args.fusion_type, modalities=args.modalities, use_cbam=not args.no_cbam,
        **loss_weights(tasks, {weight: getattr(args, weight) for weight in LOSS_WEIGHTS}),
        text_config={"vocab_size": len(processor.tokenizer)},
        decoder_config=({} if args.caption_dropout is None else {"hidden_dropout_prob": args.caption_dropout,
                                                                  "attention_probs_dropout_prob": args.caption_dropout}),
        image_size=_image_size(args),
        contrastive_loss=args.contrastive_loss,
        contrastive_margin=args.contrastive_margin,
        contrastive_temperature=args.contrastive_temperature,
        learnable_temperature=args.learnable_temperature,
        fusion_gate=args.fusion_gate,
        fusion_gate_init=args.fusion_gate_init,
        itm_negatives=args.itm_negatives,
        retrieval_pooling=args.retrieval_pooling,
        caption_label_smoothing=args.caption_label_smoothing,
        **labels,
    )
    config = XAttnConfig.from_preset(args.model_size, **overrides)
    if args.text_backbone or args.vision_backbone:
        try:
            model = XAttnForMultiTask.from_pretrained_backbones(config, text=args.text_backbone,
                                                                 vision=args.vision_backbone)
        except OSError as error:  # (the files were checked beforehand: what remains is a download that failed)
            raise SystemExit(f"the pretrained towers could not be loaded: {str(error).splitlines()[0]}. Where the "
                             "internet cannot be reached, give local files: --text_backbone FOLDER (hf download "
                             "albert/albert-base-v2 --local-dir FOLDER) and --vision_backbone FILE.safetensors "
                             "(scripts/export_densenet.py)") from None
        except ValueError as error:
            raise SystemExit(f"the pretrained towers do not fit: {error}") from None
        suppressed = suppressed_caption_ids(processor.tokenizer, model.config.decoder_config.vocab_size)
        if suppressed:  # a tokenizer smaller than the tower's vocabulary (check_tokenizer_fits said so)
            model.generation_config.suppress_tokens = suppressed
    else:
        model = XAttnForMultiTask(config)
    model.generation_config.num_beams = args.num_beams  # saved as generation_config.json with the model
    return model


@dataclass
class Run:
    """What one training run holds. `train` builds it in phases (the accelerator, the data, the model and its
    loaders, the optimisation), then `train_one_epoch` advances it until the run is over and `finish` writes it."""

    args: TrainingOptions
    accelerator: Accelerator
    on_accelerator: bool  # a GPU or MPS device: pinned memory, non-blocking copies
    counter: BadRowCounter
    tasks: set[str]
    batch_kind: str  # the batch kind that serves `tasks` (its row targets: `data.schema.BATCH_TARGETS`)
    train_data: Any
    val_data: Any
    train_examples: Any  # the training rows as examples: caption pairs or one caption per photo, maybe cropped
    streaming: StreamingData | None = None
    tokenizer: Any = None  # the tokenizer --tokenizer / --text_backbone names (None: one is trained on the data)
    processor: Any = None
    model: Any = None
    model_config: Any = None  # the unwrapped model's config (a DDP-wrapped model has none)
    collate: Any = None
    optimizer: Any = None
    plateau: PreviousLossDecay | None = None
    state: TrainingState = field(default_factory=TrainingState)
    train_loader: Any = None
    val_loader: Any = None
    stream: Any = None  # the `TrainingStream` of a streamed run (then there is no train_loader)
    max_steps: int = 0
    eval_steps: int = 0
    save_steps: int = 0
    checkpoints_dir: str = ""
    started: float = 0.0  # the clock at the start or the last checkpoint; state.train_seconds holds the time before
    progress: Any = None
    graphs_before: int = 0  # torch.compile's graph count when training started (a compiled run reports its own)
    launch: dict = field(default_factory=dict)  # the launcher's settings in use (precision, accumulation, compile)
    losses: RunningLosses = field(default_factory=RunningLosses)
    minutes: float = 0.0  # the clock the step reads: this process's every step, or the slowest one's at each log
    interval: tuple[float, int] = (0.0, 0)  # the clock and the step where the current logging interval began


def train(args) -> dict:
    """Train, evaluate and write the Hub-ready folder for parsed options (`parse_args`); returns the final metrics,
    the folder, the process count, the step reached and the push's commit (when `--push_to_hub`)."""
    accelerator, on_accelerator, launch = make_accelerator(args)
    compiled = launch["torch_compile"] != "no"
    if args.memory_saving and compiled:
        # the checkpointed ALBERT layer calls are patched in and out around each forward, which torch.compile's
        # tracing re-applies and then cannot undo (it stops at the first step)
        raise SystemExit("--memory_saving and --torch_compile cannot be combined (nor the launcher's dynamo backend):"
                         " pick one (memory_saving trades speed for memory, torch_compile memory-neutral speed)")
    if args.fsdp and compiled:
        raise SystemExit("--fsdp and --torch_compile are not combined here, nor --fsdp and the launcher's dynamo "
                         "backend (the sharded model is not prepared by Accelerate, which is what compiles it): leave "
                         "out one of them (--no-torch_compile overrides the launcher)")
    if args.fsdp and (accelerator.num_processes == 1 or accelerator.distributed_type == DistributedType.FSDP):
        raise SystemExit("--fsdp shards the model over the processes of a torchrun launch (torchrun "
                         "--nproc_per_node N scripts/train.py --fsdp); it has "
                         + ("one process" if accelerator.num_processes == 1 else
                            "an Accelerate FSDP config already: leave out one of the two"))
    if args.logging_steps < 1:
        raise SystemExit(f"--logging_steps {args.logging_steps}: give 1 or more (the losses are read every N steps)")
    for name in ("min_word_count", "vocab_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name} {getattr(args, name)}: give 1 or more")
    if args.photo_cache_gb < 0:
        raise SystemExit(f"--photo_cache_gb {args.photo_cache_gb}: give 0 (off) or more")
    check_best_metric(args)
    claim_output_dir(args, accelerator)
    tokenizer, notes = check_towers(args)  # before the data: a tower that does not fit stops the run at once
    for note in notes:
        accelerator.print(note)
    run = build_data(args, accelerator, on_accelerator)
    run.launch, run.tokenizer = launch, tokenizer
    build_model_and_loaders(run)
    build_optimization(run)
    run.started = time.time()
    run.interval = (time.perf_counter(), run.state.global_step)
    run.graphs_before = compiled_graphs()
    run.progress = tqdm(total=run.max_steps, initial=run.state.global_step, desc="training",
                        disable=args.no_progress or not run.accelerator.is_local_main_process)
    run.model.train()
    stop = run.state.global_step >= run.max_steps
    while not stop:
        stop = train_one_epoch(run)
    result = finish(run)
    if run.accelerator.is_main_process:
        print(run_summary(args, result, run.tasks))
    return result


def holds_a_model(output_dir: str) -> list[str]:
    """What in `output_dir` a new run would replace: a saved model, complete checkpoints."""
    found = [name for name in ("model.safetensors", "config.json") if os.path.exists(os.path.join(output_dir, name))]
    checkpoints = list_checkpoints(os.path.join(output_dir, "checkpoints"))
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint(s) in checkpoints/")
    return found


def claim_output_dir(args, accelerator) -> None:
    """A run never replaces a trained model by surprise (as transformers' example scripts): a folder that holds one
    stops the run unless it resumes (`--resume_from_checkpoint`) or is told to start over (`--overwrite_output_dir`,
    which clears the old checkpoints/, best/ and runs/ so that `latest` means this run's)."""
    found = holds_a_model(args.output_dir)
    if not found or args.resume_from_checkpoint:
        return
    if not args.overwrite_output_dir:
        raise SystemExit(
            f"{args.output_dir} already holds a trained model ({', '.join(found)}), which this run would replace. "
            "Continue its training with --resume_from_checkpoint latest, start over with --overwrite_output_dir, "
            "or give another --output_dir.")
    accelerator.wait_for_everyone()  # every process has looked before the main one clears
    if accelerator.is_main_process:
        for name in ("checkpoints", "best", "runs", "earlier_evaluation"):
            shutil.rmtree(os.path.join(args.output_dir, name), ignore_errors=True)
    accelerator.wait_for_everyone()


def run_summary(args, result: dict, tasks) -> str:
    """What a finished run made: where the model is, what it scored, and the commands to run next."""
    folder = args.output_dir
    metrics = {k: v for k, v in result["metrics"].items() if k.startswith("val_") and "rank" not in k}
    shown = ", ".join(f"{k[4:]} {v:.4g}" for k, v in sorted(metrics.items()))
    serving = REGISTRY[next((task for task in USAGE_ORDER if task in tasks), "captioning")]
    pipeline_task, example = serving.pipeline, serving.pipeline_input
    lines = [
        f"done: {result['global_step']} steps; the model (weights, code, processor, model card) is in {folder}",
        f"final validation: {shown or 'no metric'}",
        "next:",
        f"  python scripts/evaluate.py --model {folder}",
        f"  python -c 'from transformers import pipeline; print(pipeline(\"{pipeline_task}\", model=\"{folder}\", "
        f"trust_remote_code=True)({example}))'",
        f"  python scripts/demo.py --model {folder}",
    ]
    if args.report_to == "tensorboard":
        lines.append(f"  tensorboard --logdir {logging_dir(args)}")
    if result.get("pushed"):
        lines.insert(1, f"pushed: {result['pushed']['repo_id']} at {result['pushed']['commit']}")
    return "\n".join(lines)


def logging_dir(args) -> str:
    """Where the tracker writes: `--logging_dir`, else `runs/` in the output folder (the push leaves it out)."""
    return args.logging_dir or os.path.join(args.output_dir, "runs")


def make_accelerator(args) -> tuple[Accelerator, bool, dict]:
    """The run's `Accelerator` (a fresh one: its settings are a process-wide singleton), whether a GPU or MPS device
    is present, and the settings in use with where each came from. A launcher setting (`accelerate launch` flags or
    its config file, which reach the process as ACCELERATE_* variables) applies unless our own flag is given."""
    os.makedirs(args.output_dir, exist_ok=True)
    # Without an accelerator, Accelerate only forms a multi-process (gloo) group when told it runs on the CPU;
    # otherwise `torchrun --nproc_per_node 2` on a CPU machine silently trains two independent single-process runs.
    on_accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
    # Accelerate keeps its settings (precision, torch.compile) in a process-wide singleton: a second run in the same
    # process (a notebook, the ablation) must get its own, not the first run's. The process group stays.
    AcceleratorState._reset_state()
    # An explicit number of accumulation steps goes in as a plugin: Accelerate lets its environment variable
    # override the plain argument, and our flag must win.
    accumulation = ({"gradient_accumulation_plugin": GradientAccumulationPlugin(
        num_steps=args.gradient_accumulation_steps)} if args.gradient_accumulation_steps else {})
    on_cpu = args.cpu or not on_accelerator or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    precision, precision_source = args.mixed_precision, None
    if precision is None and not os.environ.get("ACCELERATE_MIXED_PRECISION") and on_cpu:
        precision, precision_source = cpu_precision(args.model_size)
    accelerator = Accelerator(
        cpu=args.cpu or not on_accelerator,
        mixed_precision=precision,  # None: the launcher's (ACCELERATE_MIXED_PRECISION), else "no"
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=logging_dir(args)),
        # a batch may carry labels for only some tasks: their heads then get no gradient in that step
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, non_blocking=on_accelerator),
        dynamo_plugin=_dynamo_plugin(args),
        **accumulation,
    )
    set_seed(args.seed)  # before building the model: identical initial weights on every process and every run
    launch = {
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "torch_compile": accelerator.state.dynamo_plugin.backend.value.lower(),
        "num_processes": accelerator.num_processes,
    }
    sources = {
        "mixed_precision": precision_source or _setting_source(args.mixed_precision, "--mixed_precision",
                                                               "ACCELERATE_MIXED_PRECISION"),
        "gradient_accumulation_steps": _setting_source(args.gradient_accumulation_steps,
                                                       "--gradient_accumulation_steps",
                                                       "ACCELERATE_GRADIENT_ACCUMULATION_STEPS"),
        "torch_compile": _setting_source(args.torch_compile, "--torch_compile" if args.torch_compile else
                                         "--no-torch_compile", "ACCELERATE_DYNAMO_BACKEND"),
    }
    accelerator.print(
        f"processes: {accelerator.num_processes}, device: {accelerator.device}, mixed precision: "
        f"{launch['mixed_precision']} ({sources['mixed_precision']}), gradient accumulation: "
        f"{launch['gradient_accumulation_steps']} ({sources['gradient_accumulation_steps']}), torch.compile: "
        f"{launch['torch_compile']} ({sources['torch_compile']})")
    return accelerator, on_accelerator, {**launch, "sources": sources}


def cpu_precision(model_size: str) -> tuple[str | None, str | None]:
    """The precision a CPU run takes when neither our flag nor the launcher sets one: bf16 autocast for the base
    preset on a CPU with native bf16 (AVX512-BF16 or AMX), where its training step measured 0.56x of fp32's time
    (2 cores of an AMD EPYC, batch 8, 224 px); fp32 otherwise (the small preset at 64 px measured 2.35x slower in
    bf16: its matrices are too small for the conversions to pay). docs/performance.md has the figures."""
    if model_size != "base" or not cpu_has_bf16():
        return None, None
    return "bf16", "default: the base preset on a CPU with native bf16"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (Linux: the avx512_bf16 or amx_bf16 flag)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _dynamo_plugin(args) -> TorchDynamoPlugin | None:
    """`--torch_compile` as Accelerate's dynamo plugin; None (unset) lets Accelerate read the launcher's settings
    (ACCELERATE_DYNAMO_*), `--no-torch_compile` turns them off."""
    if args.torch_compile is None:
        return None
    if not args.torch_compile:
        return TorchDynamoPlugin(backend="no")
    # fullgraph in one process: the training step has no graph break (tested), so one appearing is an error, not a
    # silent slowdown. Accelerate compiles a DDP-wrapped model, and dynamo splits DDP's forward at its gradient
    # buckets by design: several processes compile without it.
    return TorchDynamoPlugin(backend=args.torch_compile_backend, mode=args.torch_compile_mode,
                             fullgraph=int(os.environ.get("WORLD_SIZE", "1")) == 1)


def _setting_source(flag, option: str, variable: str) -> str:
    """Where a setting in use came from: our own flag, the launcher (an ACCELERATE_* variable), or the default."""
    if flag is not None:
        return option
    return "accelerate launch" if os.environ.get(variable) else "default"


def build_data(args, accelerator, on_accelerator) -> Run:
    """The training and validation rows, the tasks they serve and the training examples; stops with a message
    naming the option to change when the data cannot train anything."""
    counter = BadRowCounter()
    streaming = None
    try:
        if args.streaming:
            if not args.max_steps:
                raise ValueError("--streaming needs --max_steps: a stream has no length to count epochs by")
            if args.caption_matching:
                raise ValueError("--caption_matching pairs captions across a whole split, which a stream never holds")
            # the tokenizer, tasks and class names come from the stream's first rows; validation is read once
            streaming = StreamingData(args)  # its bad rows are counted by the collator, as any source's
            train_data, val_data = streaming.probe, streaming.validation
        else:
            train_data = undecoded(load_split(args, "train", counter, hold_out_validation=True))
            val_data = undecoded(load_split(args, "validation", counter))
        tasks = select_tasks(args.tasks, train_data)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    args.tasks = ",".join(sorted(tasks))  # what was resolved ("auto") is what the card and the tracker record
    if best_metric_key(args.metric_for_best_model) not in validation_metrics(tasks):
        raise SystemExit(f"--metric_for_best_model {args.metric_for_best_model}: this run's validation (tasks "
                         f"{args.tasks}) reports {', '.join(validation_metrics(tasks))}; choose one of them")
    kind = batch_kind(tasks)
    train_data, val_data = usable_rows(train_data, kind, counter), usable_rows(val_data, kind, counter)
    if len(val_data) == 0:
        # nothing to evaluate, keep the best of or write metrics for: stop before training, not after
        raise SystemExit(
            "no usable validation row: the source's validation split is empty or has no target for the tasks, or "
            f"--validation_fraction {args.validation_fraction} held none out of train (shards and Hub datasets hold "
            "rows out by a hash of image_id, which can pick none of a small source); raise --validation_fraction "
            f"or give the source a validation split. {counter.summary()}")
    # One example per image-caption pair: every caption trains in every epoch (validation: the first caption); or
    # one example per photo with a caption drawn per epoch.
    train_examples = train_data
    if "caption" in BATCH_TARGETS[kind]:
        train_examples = (CaptionPairs(train_data) if args.caption_sampling == "pairs"
                          else CaptionPerPhoto(train_data, seed=args.seed))
    if args.random_crop_scale < 1.0:
        train_examples = RandomResizedCrops(train_examples, args.random_crop_scale, seed=args.seed)
    run = Run(args, accelerator, on_accelerator, counter, tasks, kind, train_data, val_data, train_examples, streaming)
    _report_data(run)
    return run


def _report_data(run: Run) -> None:
    """One line on what trains; stops when the examples cannot fill a batch."""
    args, accelerator, tasks = run.args, run.accelerator, ", ".join(sorted(run.tasks))
    needed = args.batch_size * accelerator.num_processes
    if run.streaming:
        accelerator.print(f"tasks: {tasks}; streaming the train split (shuffle buffer {args.shuffle_buffer_size}), "
                          f"{len(run.val_data)} validation rows"
                          + (f"; --num_workers {args.num_workers} reads validation only (a stream is read on the "
                             "training process)" if args.num_workers else ""))
    elif len(run.train_examples) < needed:
        raise SystemExit(
            f"{len(run.train_examples)} training examples ({len(run.train_data)} usable rows) cannot fill one batch "
            f"of {args.batch_size} x {accelerator.num_processes} process(es); lower --batch_size. "
            f"{run.counter.summary()}")
    else:
        accelerator.print(f"tasks: {tasks}; {len(run.train_examples)} training examples from "
                          f"{len(run.train_data)} rows, {len(run.val_data)} validation rows")


def build_model_and_loaders(run: Run) -> None:
    """The processor (a tokenizer trained on the data unless one is given), the model, the collator and the
    training and validation loaders (or the training stream)."""
    args, accelerator = run.args, run.accelerator
    run.processor = build_processor(args, run.train_data, accelerator, tokenizer=run.tokenizer)
    answers = answer_vocabulary(run.train_data, args.num_answers) if "vqa" in run.tasks else None
    model = build_model(args, run.processor, run.tasks, class_names(run.train_data, run.val_data), answers)
    lock_towers(model, args)
    if args.memory_saving:
        model.set_memory_saving(True)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)  # the convolution weights; the images follow per batch
    quiet_tied_weights_notice(model)
    if args.fsdp:
        model = shard_model(model.to(accelerator.device))  # before the optimiser: it holds the shards
    elif accelerator.distributed_type == DistributedType.FSDP:
        vectorize_scalars(model)  # Accelerate's fully_shard (GPUs) cannot take a 0-d parameter either
    run.model, run.model_config = model, model.config
    # a compiled model gets batches of one shape (texts and captions padded to their maximum length), so it is
    # traced once for training, not again for every new length
    pad = args.pad_to_max_length if args.pad_to_max_length is not None else is_compiled(accelerator)
    # one cache per process (each holds its own shard's photos)
    cache = (PhotoCache(int(args.photo_cache_gb * 2**30))
             if args.photo_cache_gb > 0 and not args.num_workers and not run.streaming else None)
    run.collate = XAttnCollator(run.processor, targets=run.batch_kind, answer_vocab=answers, counter=run.counter,
                                pad_to_max_length=pad, photo_cache=cache)
    if run.streaming:
        # read on this process, without workers: the stream's position is then exactly what the batches used
        run.stream = run.streaming.training_stream(run.batch_kind, args.batch_size, run.collate,
                                                   rank=accelerator.process_index,
                                                   world_size=accelerator.num_processes, seed=args.seed)
    else:
        run.train_loader = DataLoader(run.train_examples, batch_size=args.batch_size, shuffle=True,
                                      collate_fn=run.collate, num_workers=args.num_workers, drop_last=True,
                                      pin_memory=run.on_accelerator, persistent_workers=args.num_workers > 0)
    run.val_loader = DataLoader(run.val_data, batch_size=args.batch_size, collate_fn=run.collate,
                                num_workers=args.num_workers, pin_memory=run.on_accelerator)


def build_optimization(run: Run) -> None:
    """The optimiser and Formula 5, everything prepared by Accelerate, the step budget, and the resumed state."""
    args, accelerator = run.args, run.accelerator
    optimizer_class = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    # one fused kernel per step for every parameter where the device has it (CUDA), instead of a loop of small ones
    fused = {"fused": True} if accelerator.device.type == "cuda" else {}
    run.optimizer = optimizer_class(parameter_groups(run.model, args.learning_rate, args.backbone_learning_rate,
                                                     args.weight_decay, args.decay_exclusions), **fused)
    run.plateau = PreviousLossDecay(run.optimizer, args.lr_decay_beta)  # Formula 5
    accelerator.register_for_checkpointing(run.plateau, run.state)
    if args.fsdp:
        # the sharded model and its optimiser stay out of prepare (it would wrap them in DDP); checkpoints save
        # them with save_sharded_state
        if run.stream is None:
            run.train_loader, run.val_loader = accelerator.prepare(run.train_loader, run.val_loader)
        else:
            run.val_loader = accelerator.prepare(run.val_loader)
    elif run.stream is None:
        run.model, run.optimizer, run.train_loader, run.val_loader = accelerator.prepare(
            run.model, run.optimizer, run.train_loader, run.val_loader)
    else:
        # every process reads its own part of the stream (split_dataset_by_node), so Accelerate does not shard it
        run.model, run.optimizer, run.val_loader = accelerator.prepare(run.model, run.optimizer, run.val_loader)
    if run.stream is None:
        steps_per_epoch = math.ceil(len(run.train_loader) / accelerator.gradient_accumulation_steps)
    else:
        accelerator.register_for_checkpointing(run.stream)
        steps_per_epoch = min(STREAM_EVALUATION_PERIOD, args.max_steps)  # a stream's "epoch" for the defaults below
    run.max_steps = args.max_steps or steps_per_epoch * args.num_epochs
    run.eval_steps = args.eval_steps or steps_per_epoch
    run.save_steps = args.save_steps or steps_per_epoch
    run.checkpoints_dir = os.path.join(args.output_dir, "checkpoints")
    _resume(run)
    if args.report_to != "none":
        accelerator.init_trackers("xattn", config={k: v for k, v in vars(args).items()
                                                   if isinstance(v, (int, float, str, bool))})


def _resume(run: Run) -> None:
    """Load `--resume_from_checkpoint` (a folder, or the latest in `checkpoints/`) into everything registered."""
    args, accelerator = run.args, run.accelerator
    if not args.resume_from_checkpoint:
        return
    path = (latest_checkpoint(run.checkpoints_dir) if args.resume_from_checkpoint == "latest"
            else args.resume_from_checkpoint)
    if path is None:
        accelerator.print(f"no checkpoint in {run.checkpoints_dir}; starting from scratch")
        return
    sharded = os.path.exists(os.path.join(path, SHARDED_MODEL_FILE))
    if sharded != bool(args.fsdp):
        raise SystemExit(
            f"cannot resume from {path}: it was saved by a run {'with' if sharded else 'without'} --fsdp; resume "
            + ("with --fsdp under torchrun, as it was trained" if sharded else "without --fsdp, as it was trained"))
    try:
        accelerator.load_state(path)
        if args.fsdp:
            load_sharded_state(run.model, run.optimizer, path, accelerator.is_main_process)
    except ValueError as error:  # a stream position saved by another number of processes; optimiser
        # groups of other options (--recipe, --decay_exclusions, --freeze_*, --backbone_learning_rate)
        raise SystemExit(f"cannot resume from {path}: {error}. Resume with the options the checkpoint was "
                         "trained with (its run's --recipe and optimiser options)") from None
    # the clock the schedule and the time budget read, as the checkpoint left it (every process alike)
    run.minutes = run.state.train_seconds / 60
    accelerator.print(f"resumed from {path} at step {run.state.global_step}")


def train_one_epoch(run: Run) -> bool:
    """One pass over the training examples (or the stream's epoch) from where the run stands, evaluating and saving
    on schedule; True when the run is over. Raises when a whole epoch made no step (every batch was bad)."""
    accelerator, state = run.accelerator, run.state
    if run.stream is None:
        epoch, done_in_epoch = divmod(state.global_step * accelerator.gradient_accumulation_steps,
                                      len(run.train_loader))
        run.train_loader.set_epoch(epoch)
        if isinstance(run.train_examples, EpochSeeded):
            run.train_examples.set_epoch(epoch)
        loader = accelerator.skip_first_batches(run.train_loader, done_in_epoch) if done_in_epoch else run.train_loader
    else:
        epoch, loader = run.stream.epoch, run.stream.batches(accelerator)
    steps_before = state.global_step
    for batch in loader:
        if train_one_step(run, batch) and after_step(run):
            return True
    # (a stream resumed at the very end of its epoch legitimately makes no step before the next one)
    if state.global_step == steps_before and (run.stream is None or run.stream.read_from_start):
        raise RuntimeError(f"epoch {epoch} made no training step: no batch had a usable row. {run.counter.summary()}")
    return False


def train_one_step(run: Run, batch) -> bool:
    """Forward, backward and (at the end of an accumulation) the optimiser step for one batch; True when an optimiser
    step was made. Nothing here waits for the device: the losses are added up where they are (`RunningLosses`), the
    clock is the host's."""
    args, accelerator, state = run.args, run.accelerator, run.state
    if run.stream is not None:
        batch = send_to_device(batch, accelerator.device, non_blocking=run.on_accelerator)
    if args.channels_last and "pixel_values" in batch:
        batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
    # Dropout and every other random draw are a function of the step, so a resumed run repeats them exactly.
    set_seed(args.seed + state.global_step, device_specific=True)
    if any_process(accelerator, not batch):
        # Every row of this batch was bad (counted). All processes skip together: one process stepping
        # alone would wait for the others' gradients forever. The epoch check stops a run of these.
        return False
    with accelerator.accumulate(run.model):
        with accelerator.autocast():
            out = run.model(**batch)
        if out.loss is None:
            raise RuntimeError(f"the batch at step {state.global_step} gave no loss: the model "
                               f"(modalities={run.model_config.modalities}) has no head for its targets "
                               f"({', '.join(k for k in batch if 'ids' in k)}); check --tasks and --modalities")
        run.losses.add(out, state.global_step + 1)
        accelerator.backward(out.loss)
        if accelerator.sync_gradients and args.max_grad_norm:
            accelerator.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
        if args.max_train_minutes and accelerator.num_processes == 1:
            run.minutes = _minutes(state, run.started)  # (several processes share their clocks at each log)
        # every group's peak rate x Formula 5's factor x the schedule (warm-up, cosine)
        run.plateau.apply(learning_rate_factor(state.global_step, run.max_steps, args.warmup_steps,
                                               args.lr_scheduler,
                                               run.minutes / args.max_train_minutes if args.max_train_minutes else 0.0))
        if accelerator.sync_gradients:  # (a prepared optimiser checks this itself; the sharded run's is plain)
            run.optimizer.step()
            run.optimizer.zero_grad()
    if not accelerator.sync_gradients:
        return False
    state.global_step += 1
    return True


def after_step(run: Run) -> bool:
    """Every `--logging_steps` (and before each evaluation and checkpoint): log the losses and check them; evaluate
    (Formula 5, the best model) and save a checkpoint on schedule. True at the last step."""
    args, accelerator, state = run.args, run.accelerator, run.state
    run.progress.update(1)
    step = state.global_step
    due = (step % args.logging_steps == 0, step % run.eval_steps == 0, step % run.save_steps == 0,
           step >= run.max_steps)
    if args.max_train_minutes and accelerator.num_processes > 1 and any(due):
        # the slowest clock, so that every process stops on the same step and sets the same rate
        run.minutes = slowest_clock(accelerator, _minutes(state, run.started))
    timed_out = bool(args.max_train_minutes) and run.minutes >= args.max_train_minutes
    last = due[3] or timed_out
    if not (any(due) or timed_out):
        return False
    logs = {"step": step, **_read_losses(run), "lr": run.optimizer.param_groups[0]["lr"]}
    # training throughput since the last log, evaluations and checkpoints left out (the read above waited for the
    # device, so the clock covers the steps' work); every process's samples
    began, first = run.interval
    samples = (step - first) * args.batch_size * accelerator.gradient_accumulation_steps * accelerator.num_processes
    logs["train_samples_per_s"] = samples / max(time.perf_counter() - began, 1e-9)
    if not is_sharded(run.model):  # (a sharded gate is a slice on each process)
        logs.update(gate_openings(run.model_config, accelerator.unwrap_model(run.model, keep_torch_compile=False)))
    run.progress.set_postfix(loss=f"{logs['train_loss']:.3f}", samples_per_s=f"{logs['train_samples_per_s']:.1f}")
    if due[1] or last:
        metrics = evaluate_multitask(run.model, run.val_loader, accelerator)
        if best_metric_key(args.metric_for_best_model)[len("val_"):] in CAPTION_METRICS:
            metrics.update(validation_caption_metrics(run.model, run.processor, run.val_data,
                                                      args.caption_eval_samples, accelerator))
        logs.update(metrics)
        if step >= args.warmup_steps:
            run.plateau.step(metrics.get("val_loss", logs["train_loss"]))
        _keep_best(args, accelerator, run.model, run.processor, state, metrics)
        accelerator.print(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    state.history.append(logs)
    accelerator.log(logs, step=step)
    if due[2] or last:
        if run.stream is not None:
            run.stream.capture(accelerator)  # every process's position in the stream goes into the checkpoint
        state.train_seconds, run.started = state.train_seconds + time.time() - run.started, time.time()
        save_checkpoint_atomically(accelerator, run.checkpoints_dir, step, args.save_total_limit,
                                   _sharded_saver(run))
    run.interval = (time.perf_counter(), step)
    return last


def gate_openings(config, model) -> dict:
    """tanh(g) of every gated cross-attention (the share of the attention's output added to the stream), by layer
    and direction: `gate_text_from_image_0`, `gate_image_from_text_0`, ... Read at each log, as the losses are."""
    if not getattr(config, "fusion_gate", False) or getattr(model, "xattn", None) is None:
        return {}
    openings = {}
    for index, layer in enumerate(model.xattn.layers):
        for name, block in (("text_from_image", layer.text_block), ("image_from_text", layer.image_block)):
            gate = getattr(getattr(block, "cross_attention", None), "gate", None)
            if gate is not None:
                openings[f"gate_{name}_{index}"] = float(torch.tanh(gate.detach().float()).reshape(-1)[0])
    return openings


def _read_losses(run: Run) -> dict:
    """The mean losses since the last log (one read from the device); a non-finite one stops the run, naming its
    step and the checkpoint to go back to (every checkpoint is written after such a read, so none holds its weights)."""
    means, bad_step = run.losses.read()
    first = run.state.history[-1]["step"] + 1 if run.state.history else 1
    if bad_step is not None:
        raise FloatingPointError(
            f"non-finite loss at step {bad_step} (means over steps {first}-{run.state.global_step}: "
            + ", ".join(f"{key}={value:.4g}" for key, value in means.items())
            + f"); lower --learning_rate or check the data. The last checkpoint is in {run.checkpoints_dir}.")
    return means


def finish(run: Run) -> dict:
    """Check the replicas agree, write the Hub-ready folder, push it when asked; returns what `train` returns."""
    args, accelerator, state = run.args, run.accelerator, run.state
    run.progress.close()
    accelerator.wait_for_everyone()
    if not args.fsdp:  # (sharded, each process holds its own part: there are no replicas to compare)
        _check_replicas_agree(accelerator, run.model)
    final_metrics = state.history[-1] if state.history else {}
    weights = _weights(accelerator, run.model)  # a collective: every process gathers, under FSDP/DeepSpeed too
    graphs = None
    if is_compiled(accelerator):
        # training's graph, evaluation's (another mode) and its last short batch's; more means recompilation
        graphs = compiled_graphs() - run.graphs_before
        accelerator.print(f"torch.compile: {graphs} graph(s) compiled in this run")
    if accelerator.is_main_process:
        _write_outputs(args, accelerator, run.model, run.processor, state, final_metrics, run.counter,
                       _minutes(state, run.started) * 60, weights, graphs, run.launch)
    accelerator.end_training()
    accelerator.print(run.counter.summary())
    pushed = None
    if args.push_to_hub and accelerator.is_main_process:
        if not args.hub_model_id:
            raise SystemExit("--push_to_hub needs --hub_model_id user/name")
        pushed = push_folder(args.output_dir, args.hub_model_id, private=args.hub_private,
                             endpoint=os.environ.get("HF_ENDPOINT"))
    return {"metrics": final_metrics, "output_dir": args.output_dir, "num_processes": accelerator.num_processes,
            "global_step": state.global_step, "pushed": pushed}


def _check_replicas_agree(accelerator, model) -> None:
    """With several processes (DDP on one or several machines), every replica must end with the same weights: each
    sends a fingerprint of its parameters (sum and sum of squares, in float64) and all are compared."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        plain = accelerator.unwrap_model(model, keep_torch_compile=False)
        parameters = [p.detach().double() for p in plain.parameters()]
        fingerprint = torch.stack([sum(p.sum() for p in parameters), sum(p.pow(2).sum() for p in parameters)])
    every = accelerator.gather(fingerprint.to(accelerator.device)[None]).cpu()  # (processes, 2)
    if not torch.equal(every, every[:1].expand_as(every)):
        raise RuntimeError(f"the {accelerator.num_processes} processes ended with different weights: {every.tolist()}")
    accelerator.print(f"weights identical on all {accelerator.num_processes} processes "
                      f"(fingerprint {every[0, 0].item():.10g}, {every[0, 1].item():.10g})")


def _plain(accelerator, model):
    """The model as its own class, for `save_pretrained` with gathered weights: unwrapped from DDP and
    torch.compile, or for the loop's FSDP2 an empty instance of the unsharded class."""
    if is_sharded(model):
        return unsharded_shell(model)
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def _sharded_saver(run: Run):
    """What a checkpoint of an --fsdp run adds to Accelerate's: the gathered model and optimiser state."""
    if not run.args.fsdp:
        return None
    return lambda directory: save_sharded_state(run.model, run.optimizer, directory,
                                                run.accelerator.is_main_process)


def _weights(accelerator, model) -> dict | None:
    """The model's weights as `accelerator.get_state_dict` gathers them (sharded or not; `full_weights` for the
    loop's own FSDP2), named as the plain model names them: without the `_orig_mod.` that torch.compile's wrapper
    puts in front. A collective; the processes other than the main one may get None."""
    if is_sharded(model):
        weights = full_weights(model)
        return weights if accelerator.is_main_process else None
    weights = accelerator.get_state_dict(model)
    if weights is not None:
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(weights, "_orig_mod.")
        scalar_shapes(accelerator.unwrap_model(model, keep_torch_compile=False), weights)
    return weights


def _minutes(state, started: float) -> float:
    """Minutes this run has trained, across resumes: the time saved with the last checkpoint plus the time since."""
    return (state.train_seconds + time.time() - started) / 60


def validation_metrics(tasks) -> list[str]:
    """The metrics the loop's validation reports for `tasks` (what `--metric_for_best_model` may name)."""
    names = ["val_loss", *(f"val_{key}" for task in sorted(tasks) for key in REGISTRY[task].losses)]
    if "classification" in tasks:
        names.append("val_accuracy")
    if "vqa" in tasks:
        names.append("val_vqa_accuracy")
    if "retrieval" in tasks:
        names += [f"val_i2t_{name}" for name in ("R@1", "R@5", "R@10", "mean_rank", "median_rank")]
    if "captioning" in tasks:
        names += [f"val_{name}" for name in CAPTION_METRICS]
    return list(dict.fromkeys(names))


def check_best_metric(args) -> None:
    """What `--metric_for_best_model` needs, checked before any data is read: a metric some task reports (the run's
    own tasks are checked once known), a caption metric's validation captions, Java for METEOR, one process per
    model copy (the main process captions alone: a sharded model cannot)."""
    key = best_metric_key(args.metric_for_best_model)
    if key not in validation_metrics(REGISTRY):
        raise SystemExit(f"--metric_for_best_model {args.metric_for_best_model}: no validation reports it; choose one "
                         f"of {', '.join(validation_metrics(REGISTRY))}")
    if key[len("val_"):] not in CAPTION_METRICS:
        return
    if args.caption_eval_samples < 1:
        raise SystemExit(f"--metric_for_best_model {args.metric_for_best_model} compares captions of "
                         f"--caption_eval_samples validation photos: give 1 or more (not {args.caption_eval_samples})")
    if key == "val_METEOR" and shutil.which("java") is None:
        raise SystemExit("--metric_for_best_model meteor needs Java (the COCO toolkit's METEOR runs on it), which "
                         "this machine lacks: install a JRE or choose cider")
    if args.fsdp:
        raise SystemExit("--metric_for_best_model with a caption metric captions on the main process alone, which a "
                         "sharded (--fsdp) model cannot: choose val_loss or another validation metric")


def best_metric_key(name: str) -> str:
    """`--metric_for_best_model` as the validation metric it names: "cider" -> "val_CIDEr", "bleu_4" ->
    "val_BLEU-4", "vqa_accuracy" -> "val_vqa_accuracy"; a name that starts with "val_" is that metric."""
    bare = name[len("val_"):] if name.lower().startswith("val_") else name
    def plain(text):
        return text.lower().replace("-", "").replace("_", "")

    caption = {plain(metric): metric for metric in CAPTION_METRICS}.get(plain(bare))
    return f"val_{caption or bare}"


def _keep_best(args, accelerator, model, processor, state, metrics):
    """Save the model as `best/` when the chosen validation metric improves (lower is better for losses)."""
    key = best_metric_key(args.metric_for_best_model)
    if key not in metrics:  # the name was checked up front: the validation rows lacked the metric's target
        accelerator.print(f"warning: no {key} at step {state.global_step} (the validation split has no row for it): "
                          "best/ is not updated")
        return
    value, lower_is_better = metrics[key], "loss" in key or "rank" in key
    better = state.best_metric is None or (value < state.best_metric if lower_is_better else value > state.best_metric)
    if better:
        state.best_metric = value
        best = os.path.join(args.output_dir, "best")
        # every process takes part in gathering the weights (FSDP and DeepSpeed shard them); the main one writes
        # them (another process's save_pretrained would gather sharded tensors again, alone, and wait forever)
        weights = _weights(accelerator, model)
        if accelerator.is_main_process:
            _plain(accelerator, model).save_pretrained(best, save_function=accelerator.save, state_dict=weights)
            processor.save_pretrained(best)
            write_json(os.path.join(best, "metrics.json"), {**metrics, "step": state.global_step})


def _write_outputs(args, accelerator, model, processor, state, metrics, counter, seconds, weights=None,
                   graphs=None, launch=None):
    """The Hub-ready folder: final weights + code + processor, metrics, curves and the model card."""
    out = args.output_dir
    set_aside_evaluation(out, accelerator)
    model = _plain(accelerator, model)
    model.save_pretrained(out, save_function=accelerator.save, state_dict=weights)
    processor.save_pretrained(out)
    scalar_metrics = {k: v for k, v in metrics.items() if k.startswith("val_")}
    results = {
        "metrics": scalar_metrics, "global_step": state.global_step, "train_seconds": round(seconds, 1),
        "best_metric": state.best_metric, "metric_for_best_model": args.metric_for_best_model,
        "num_processes": accelerator.num_processes, "bad_rows": dict(counter.counts), "converted": dict(counter.converted),
        "launch": launch or {},
    }
    speeds = sorted(row["train_samples_per_s"] for row in state.history[1:] if "train_samples_per_s" in row)
    if speeds:  # the median logging interval's, the first left out (it holds the warm-up: allocation, compiling)
        results["train_samples_per_s"] = round(speeds[len(speeds) // 2], 3)
    if graphs is not None:
        results["compiled_graphs"] = graphs
    write_json(os.path.join(out, "history.json"), state.history)
    plot_training_curves(state.history, os.path.join(out, "training_curves.png"))
    identity = dataset_identity(args)
    values = {
        "hub_base_models": hub_base_models(args),
        "hub_datasets": [identity["dataset_hub_id"]] if identity["dataset_hub_id"] else [],
        "dataset": identity["dataset_title"],
        "model_size": args.model_size,
        "parameters": f"{sum(p.numel() for p in model.parameters()):,}",
        "fusion_type": model.config.fusion_type,
        "modalities": model.config.modalities,
        "use_cbam": str(model.config.use_cbam),
        "tasks": args.tasks,
        "training": (f"recipe {args.recipe}: {state.global_step} steps, batch {args.batch_size} x "
                     f"{accelerator.num_processes} process(es), {'AdamW' if args.optimizer == 'adamw' else 'Adam'} lr "
                     f"{args.learning_rate} ({args.lr_scheduler}, {args.warmup_steps} warm-up steps), "
                     f"{describe_towers(args)}, weight decay "
                     f"{args.weight_decay}{' (not on biases, norms, embeddings)' if args.decay_exclusions else ''}, "
                     + (f"lr x {args.lr_decay_beta} when the validation loss stops falling (Formula 5), "
                        if args.lr_decay_beta < 1 else "")
                     + f"{args.contrastive_loss} retrieval loss, "
                     + (f"{launch['mixed_precision']} mixed precision, "
                        if launch and launch.get("mixed_precision", "no") != "no" else "")
                     + f"seed {args.seed}, {seconds / 60:.1f} minutes"),
        "command": launch_command(accelerator) + " " + " ".join(sys.argv[1:]) if argv_is_cli()
        else "scripts/train.py main(...)",
    }
    results["card"] = values
    write_json(os.path.join(out, "train_results.json"), results)
    Path(out, "README.md").write_text(build_card(out, Path(out).name), encoding="utf-8")


def set_aside_evaluation(folder: str, accelerator) -> None:
    """An evaluation found in the folder describes the weights about to be replaced (a resumed or restarted run):
    move it to `earlier_evaluation/`, so that neither the folder nor a push presents it as the new model's."""
    found = [name for name in EVALUATION_FILES if os.path.exists(os.path.join(folder, name))]
    if not found:
        return
    earlier = os.path.join(folder, "earlier_evaluation")
    shutil.rmtree(earlier, ignore_errors=True)
    os.makedirs(earlier)
    for name in found:
        os.replace(os.path.join(folder, name), os.path.join(earlier, name))
    accelerator.print(f"moved the evaluation of the earlier weights ({', '.join(found)}) to {earlier}; evaluate the "
                      "new model with scripts/evaluate.py")


def launch_command(accelerator) -> str:
    """How this run was started, as a command to run again: `python scripts/train.py`, or torchrun's equivalent for
    several processes (Accelerate's and torchrun's launchers both set the sizes read here)."""
    if accelerator.num_processes == 1:
        return "python scripts/train.py"
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    nodes = accelerator.num_processes // max(per_node, 1)
    return f"torchrun{f' --nnodes {nodes}' if nodes > 1 else ''} --nproc_per_node {per_node} scripts/train.py"


def argv_is_cli() -> bool:
    return Path(sys.argv[0]).name == "train.py"


