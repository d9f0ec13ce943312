"""The training loop: what a run holds (`Run`), an epoch and a step (accumulation, clipping, the schedule, exact
resume), the logs, the validation on schedule (Formula 5, the best model), the checkpoints, and the end of the run
(the replicas' check, the final weights). `main.train` sets a run up and drives it; the run's records and the model
card are `publishing`'s.

The loop runs on one process or several (`accelerate launch`, `torchrun`) alike; see `scripts/train.py` for the
commands.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device, set_seed

from modeling_xattn.training.checkpoints import TrainingState, save_checkpoint_atomically, write_json
from modeling_xattn.training.compilation import compiled_graphs, is_compiled
from modeling_xattn.training.data.schema import BadRowCounter
from modeling_xattn.training.data.streaming import StreamingData
from modeling_xattn.training.data.views import EpochSeeded
from modeling_xattn.training.distributed import any_process, slowest_clock
from modeling_xattn.training.evaluation import evaluate_multitask, validation_caption_metrics
from modeling_xattn.training.logs import RunningLosses
from modeling_xattn.training.metrics import CAPTION_METRICS
from modeling_xattn.training.optimization import PreviousLossDecay, learning_rate_factor
from modeling_xattn.training.options import TrainingOptions
from modeling_xattn.training.publishing import push_folder, set_aside_evaluation, write_run_records
from modeling_xattn.training.sharding import (
    full_weights,
    is_sharded,
    save_sharded_state,
    scalar_shapes,
    unsharded_shell,
)


@dataclass
class Run:
    """What one training run holds. `main.train` builds it in phases (the accelerator, the data, the model and its
    loaders, the optimisation), then `train_one_epoch` advances it until the run is over and `finish` writes it."""

    args: TrainingOptions
    accelerator: Accelerator
    on_accelerator: bool  # a GPU or MPS device: pinned memory, non-blocking copies
    counter: BadRowCounter
    tasks: set[str]
    targets: str  # the row targets its batches are made of (`tasks.batch_targets`, `data.schema.BATCH_TARGETS`)
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
        _write_outputs(run, final_metrics, weights, graphs)
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


def _write_outputs(run: Run, metrics: dict, weights=None, graphs=None) -> None:
    """The Hub-ready folder: the final weights and the processor, then the run's records and the model card
    (`publishing.write_run_records`)."""
    args, accelerator = run.args, run.accelerator
    set_aside_evaluation(args.output_dir, accelerator)
    model = _plain(accelerator, run.model)
    model.save_pretrained(args.output_dir, save_function=accelerator.save, state_dict=weights)
    run.processor.save_pretrained(args.output_dir)
    write_run_records(args, run.tasks, model, run.state, metrics, run.counter, _minutes(run.state, run.started) * 60,
                      accelerator.num_processes, graphs, run.launch)

