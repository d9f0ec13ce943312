"""The training job's set-up: the options, the accelerator, the output folder, the data, the tokenizer, the config
(built once), the processor and the model from it, the loaders and the optimisation; then `train` runs the loop
(`loop.py`) and the run's outputs are written (`publishing.py`). What `scripts/train.py` calls:

    train(parse_args(argv))      # or train(TrainingOptions(dataset="imagefolder", data_dir="photos/", ...))
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.state import AcceleratorState
from accelerate.utils import (
    DistributedType,
    GradientAccumulationPlugin,
    ProjectConfiguration,
    TorchDynamoPlugin,
    set_seed,
)
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from modeling_xattn.configuration_xattn import XAttnConfig
from modeling_xattn.modeling_xattn import XAttnForMultiTask
from modeling_xattn.processing_xattn import XAttnProcessor, train_albert_tokenizer
from modeling_xattn.training.backbones import from_pretrained_backbones
from modeling_xattn.training.checkpoints import latest_checkpoint, list_checkpoints, quiet_tied_weights_notice
from modeling_xattn.training.collate import PhotoCache, XAttnCollator
from modeling_xattn.training.compilation import compiled_graphs, is_compiled
from modeling_xattn.training.data.schema import (
    BATCH_TARGETS,
    BadRowCounter,
    answer_vocabulary,
    class_names,
    undecoded,
)
from modeling_xattn.training.data.relations import FreshScenes
from modeling_xattn.training.data.sources import load_split, relation_curriculum, relation_spec
from modeling_xattn.training.data.streaming import StreamingData
from modeling_xattn.training.data.views import CaptionPairs, CaptionPerPhoto, RandomResizedCrops
from modeling_xattn.training.loop import Run, best_metric_key, finish, train_one_epoch
from modeling_xattn.training.metrics import CAPTION_METRICS
from modeling_xattn.training.optimization import PreviousLossDecay, parameter_groups
from modeling_xattn.training.options import TrainingOptions, logging_dir, parse_training_options
from modeling_xattn.training.publishing import run_summary
from modeling_xattn.training.sharding import (
    MODEL_FILE as SHARDED_MODEL_FILE,
    load_sharded_state,
    shard_model,
    vectorize_scalars,
)
from modeling_xattn.training.tasks import (
    REGISTRY,
    batch_targets,
    loss_weight_specs,
    loss_weights,
    select_tasks,
    usable_rows,
    validation_metrics,
)
from modeling_xattn.training.towers import check_towers, lock_towers, suppressed_caption_ids


STREAM_EVALUATION_PERIOD = 1000  # with --streaming, --eval_steps 0 / --save_steps 0 mean every this many steps


def parse_args(argv=None, description: str | None = None) -> TrainingOptions:
    """The training options (`scripts/train.py --help` lists them, by group), typed, with the recipe's values filled
    in: what `train` takes."""
    return parse_training_options(argv, description or __doc__)


def train(args) -> dict:
    """Train, evaluate and write the Hub-ready folder for parsed options (`parse_args`); returns the final metrics,
    the folder, the process count, the step reached and the push's commit (when `--push_to_hub`)."""
    accelerator, on_accelerator, launch = make_accelerator(args)
    validate(args, launch, accelerator)
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


def holds_a_model(output_dir: str) -> list[str]:
    """What in `output_dir` a new run would replace: a saved model, complete checkpoints."""
    found = [name for name in ("model.safetensors", "config.json") if os.path.exists(os.path.join(output_dir, name))]
    checkpoints = list_checkpoints(os.path.join(output_dir, "checkpoints"))
    if checkpoints:
        found.append(f"{len(checkpoints)} checkpoint(s) in checkpoints/")
    return found


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
    preset on a CPU with native bf16 (AVX512-BF16 or AMX), where its training step measured faster than fp32's;
    fp32 otherwise (the small preset measured slower in bf16: its matrices are too small for the conversions to pay).
    docs/performance.md has the figures."""
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


def validate(args, launch: dict, accelerator) -> None:
    """Every check of the options against each other and against the launch, before any file or data is read: a
    combination that cannot run stops with a message naming the option to change. (The towers' files are checked
    next, by `check_towers`, and the data's knobs where the data is read, each naming its option too.)"""
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
    if args.streaming and not args.max_steps:
        raise SystemExit("--streaming needs --max_steps: a stream has no length to count epochs by")
    if args.streaming and args.caption_matching:
        raise SystemExit("--caption_matching pairs captions across a whole split, which a stream never holds")
    if args.dataset == "relations":
        try:
            relation_spec(args)  # the generator's knobs, each named by its option
        except ValueError as error:
            raise SystemExit(str(error)) from None
    # what --metric_for_best_model needs: a metric some task reports (the run's own tasks are checked once known), a
    # caption metric's validation captions, Java for METEOR, one process per model copy (the main process captions
    # alone: a sharded model cannot)
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


def build_data(args, accelerator, on_accelerator) -> Run:
    """The training and validation rows, the tasks they serve and the training examples; stops with a message
    naming the option to change when the data cannot train anything."""
    counter = BadRowCounter()
    streaming = None
    try:
        if args.streaming:
            # the tokenizer, tasks and class names come from the stream's first rows; validation is read once
            streaming = StreamingData(args)  # its bad rows are counted by the collator, as any source's
            train_data, val_data = streaming.probe, streaming.validation
        else:
            train_data = undecoded(load_split(args, "train", counter, hold_out_validation=True))
            val_data = undecoded(load_split(args, "validation", counter))
        tasks = select_tasks(args.tasks, train_data)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(str(error)) from None
    if best_metric_key(args.metric_for_best_model) not in validation_metrics(tasks):
        raise SystemExit(f"--metric_for_best_model {args.metric_for_best_model}: this run's validation (tasks "
                         f"{','.join(sorted(tasks))}) reports {', '.join(validation_metrics(tasks))}; choose one of "
                         "them")
    targets = batch_targets(tasks)
    train_data, val_data = usable_rows(train_data, targets, counter), usable_rows(val_data, targets, counter)
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
    if "caption" in BATCH_TARGETS[targets]:
        train_examples = (CaptionPairs(train_data) if args.caption_sampling == "pairs"
                          else CaptionPerPhoto(train_data, seed=args.seed))
    if args.dataset == "relations":  # new scenes every epoch, one relation statement per example
        train_examples = FreshScenes(train_data, relation_spec(args), seed=args.seed,
                                     curriculum=relation_curriculum(args))
    if args.random_crop_scale < 1.0:
        train_examples = RandomResizedCrops(train_examples, args.random_crop_scale, seed=args.seed)
    run = Run(args, accelerator, on_accelerator, counter, tasks, targets, train_data, val_data, train_examples, streaming)
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


def build_tokenizer(args, train_data, accelerator, tokenizer=None, tasks=()):
    """The tokenizer: `tokenizer` (the one `--tokenizer` or `--text_backbone` names, loaded by `check_towers`), else
    one trained on the training rows' texts and captions, and their questions when `tasks` has VQA (saved in the
    output folder's `tokenizer/`, and reused from there by a resumed run)."""
    if tokenizer is not None:
        return tokenizer
    folder = Path(args.output_dir) / "tokenizer"
    if accelerator.is_main_process and not (folder / "tokenizer.json").exists():
        corpus = list(train_data["text"]) + [c for captions in train_data["captions"] for c in captions]
        if "vqa" in tasks and "question" in train_data.column_names:  # the words a VQA model reads are the questions'
            corpus += list(train_data["question"])
        words = dict(vocab_size=args.vocab_size) if args.vocab_size else dict(vocab_size=None,
                                                                               min_word_count=args.min_word_count)
        train_albert_tokenizer(corpus, **words).save_pretrained(folder)
    accelerator.wait_for_everyone()
    return AutoTokenizer.from_pretrained(str(folder))


def build_config(args, tasks, label_names, vocab_size: int, answers=None) -> XAttnConfig:
    """The model's config, built once from the options: the preset, its overrides, Formula 4's weights for `tasks`,
    the classifier's labels (or VQA's answers) and the text vocabulary's size. The processor's image size is its."""
    if answers:
        labels = dict(id2label=dict(enumerate(answers)), problem_type="multi_label_classification")
    else:
        labels = dict(id2label=dict(enumerate(label_names)))
    overrides = dict(
        fusion_type=args.fusion_type, modalities=args.modalities, use_cbam=not args.no_cbam,
        # (a weight that is not an option, a task registered after the options were parsed, takes its default)
        **loss_weights(tasks, {w.name: getattr(args, w.name, w.default) for w in loss_weight_specs()}),
        text_config={"vocab_size": vocab_size},
        decoder_config=({} if args.caption_dropout is None else {"hidden_dropout_prob": args.caption_dropout,
                                                                  "attention_probs_dropout_prob": args.caption_dropout}),
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
    if args.image_size:
        overrides["image_size"] = args.image_size  # else the preset's
    return XAttnConfig.from_preset(args.model_size, **overrides)


def build_model(args, config, tokenizer):
    """The model of `config`: from scratch, or with the pretrained towers `--text_backbone` / `--vision_backbone`
    name (a tokenizer smaller than the text tower's vocabulary gets the ids it lacks suppressed in generation)."""
    if args.text_backbone or args.vision_backbone:
        try:
            model = from_pretrained_backbones(XAttnForMultiTask, config, text=args.text_backbone,
                                              vision=args.vision_backbone)
        except OSError as error:  # (the files were checked beforehand: what remains is a download that failed)
            raise SystemExit(f"the pretrained towers could not be loaded: {str(error).splitlines()[0]}. Where the "
                             "internet cannot be reached, give local files: --text_backbone FOLDER (hf download "
                             "albert/albert-base-v2 --local-dir FOLDER) and --vision_backbone FILE.safetensors "
                             "(scripts/export_densenet.py)") from None
        except ValueError as error:
            raise SystemExit(f"the pretrained towers do not fit: {error}") from None
        suppressed = suppressed_caption_ids(tokenizer, model.config.decoder_config.vocab_size)
        if suppressed:  # a tokenizer smaller than the tower's vocabulary (check_tokenizer_fits said so)
            model.generation_config.suppress_tokens = suppressed
    else:
        model = XAttnForMultiTask(config)
    model.generation_config.num_beams = args.num_beams  # saved as generation_config.json with the model
    return model


def build_model_and_loaders(run: Run) -> None:
    """The tokenizer (trained on the data unless one is given), the config, the processor and the model from it,
    the collator and the training and validation loaders (or the training stream)."""
    args, accelerator = run.args, run.accelerator
    tokenizer = build_tokenizer(args, run.train_data, accelerator, tokenizer=run.tokenizer, tasks=run.tasks)
    answers = answer_vocabulary(run.train_data, args.num_answers) if "vqa" in run.tasks else None
    config = build_config(args, run.tasks, class_names(run.train_data, run.val_data), len(tokenizer), answers)
    run.processor = XAttnProcessor.build(tokenizer, image_size=config.image_size)
    model = build_model(args, config, tokenizer)
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
    run.collate = XAttnCollator(run.processor, targets=run.targets, answer_vocab=answers, counter=run.counter,
                                pad_to_max_length=pad, photo_cache=cache)
    if run.streaming:
        # read on this process, without workers: the stream's position is then exactly what the batches used
        run.stream = run.streaming.training_stream(run.targets, args.batch_size, run.collate,
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
        # the tasks as resolved ("auto": those the data has), as the card records them
        options = {**vars(args), "tasks": ",".join(sorted(run.tasks))}
        accelerator.init_trackers("xattn", config={k: v for k, v in options.items()
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
