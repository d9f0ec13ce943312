"""FSDP2 (torch's `fully_shard`) applied by the training loop itself, for `train.py --fsdp` under torchrun.

Accelerate's FSDP path is for GPUs: on CPU processes (gloo) its FSDP config silently trains with DDP instead. Here
the loop shards the model with the same units as `scripts/accelerate/fsdp.yaml` and keeps the model and its
optimiser out of `accelerator.prepare` (which would wrap them in DDP); Accelerate still shards the data, seeds,
saves the random states and the loop's own objects. Checkpoints gather the model and the optimiser state into full
state dicts (every process takes part; the main one writes) and scatter them back on resume."""

from __future__ import annotations

import os
import warnings

import torch
from safetensors.torch import load_file, save_file

# Each fusion layer, each ALBERT layer and each caption-decoder layer is its own unit, and the DenseNet + CBAM tower
# one (its dense blocks concatenate every earlier feature map, so splitting it saves little); the heads and the
# embeddings stay in the root unit. scripts/accelerate/fsdp.yaml names the same classes (tested).
FSDP_UNITS = ("XAttnFusionLayer", "AlbertLayer", "BertLayer", "XAttnVisionEncoder")
MODEL_FILE = "fsdp_model.safetensors"
OPTIMIZER_FILE = "fsdp_optimizer.bin"


def shard_model(model: torch.nn.Module, units=FSDP_UNITS) -> torch.nn.Module:
    """`fully_shard` every module whose class is named in `units`, innermost first, then the whole model (in place;
    returns it), its scalars made vectors first (`vectorize_scalars`). Needs the process group: call it under
    torchrun, on the model already on its device."""
    from torch.distributed.fsdp import fully_shard

    vectorize_scalars(model)
    # fully_shard warns on every forward that the model returns views (its outputs' slices), which an in-place op
    # could detach from its backward hook; the loop never changes an output in place
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    for module in reversed(list(model.modules())):
        if module is not model and type(module).__name__ in units:
            fully_shard(module)
    fully_shard(model)
    model.register_forward_pre_hook(_take_main_process_buffers)
    return model


def vectorize_scalars(model: torch.nn.Module) -> list[str]:
    """FSDP2 cannot shard a 0-d parameter (the retrieval head's learned logit scale and bias are scalars, as CLIP's):
    each becomes shape (1,), in place, which computes the same (it only broadcasts). Their names are kept on the
    model (and returned) so that `scalar_shapes` gives them their saved shape back: the weight files then match an
    unsharded run's. Call it before the optimiser is built."""
    model._scalar_parameters = []
    for module_name, module in model.named_modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter.dim() == 0:
                setattr(module, name, torch.nn.Parameter(parameter.detach().reshape(1),
                                                         requires_grad=parameter.requires_grad))
                model._scalar_parameters.append(f"{module_name}.{name}" if module_name else name)
    return model._scalar_parameters


def scalar_shapes(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`weights` with the parameters `vectorize_scalars` changed back to 0-d (in place; returns it)."""
    for name in getattr(model, "_scalar_parameters", ()):
        if name in weights:
            weights[name] = weights[name].reshape(())
    return weights


@torch.no_grad()
def _take_main_process_buffers(model, args):
    """Before every forward each process takes the main process's buffers (BatchNorm's running statistics), as DDP
    does with `broadcast_buffers=True`: FSDP shards parameters only, and every process would otherwise evaluate
    with statistics of its own share of the data. One broadcast per dtype, of the buffers laid end to end."""
    import torch.distributed as dist

    by_dtype = {}
    for buffer in model.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    for buffers in by_dtype.values():
        flat = torch.cat([buffer.reshape(-1) for buffer in buffers])
        dist.broadcast(flat, src=0)
        for buffer, value in zip(buffers, flat.split([buffer.numel() for buffer in buffers])):
            buffer.copy_(value.view_as(buffer))


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kwargs)


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The sharded model's weights gathered in full on the CPU of the main process, named and shaped as the
    unsharded model saves them (a collective: every process calls it; the others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    weights = scalar_shapes(model, get_model_state_dict(model, options=_full_options()))
    # a tied weight (the decoder's output layer is its input embedding) comes back as a copy under its second name:
    # left out, as save_pretrained leaves it out of an unsharded model's file (loading ties it again)
    own = {name for name, _ in model.named_parameters()} | {name for name, _ in model.named_buffers()}
    return {name: tensor for name, tensor in weights.items() if name in own}


def save_sharded_state(model, optimizer, directory: str, is_main_process: bool) -> None:
    """Gather the model and the optimiser state (a collective) and write them into `directory` from the main
    process: the weights as safetensors, the optimiser state (tensors, numbers, parameter names) with `torch.save`."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer, options=_full_options())
    if is_main_process:
        # tied weights come back as one tensor under two names, which safetensors refuses to share: copies
        save_file({name: tensor.contiguous().clone() for name, tensor in model_state.items()},
                  os.path.join(directory, MODEL_FILE))
        torch.save(optimizer_state, os.path.join(directory, OPTIMIZER_FILE))


def load_sharded_state(model, optimizer, directory: str, is_main_process: bool) -> None:
    """Read what `save_sharded_state` wrote on the main process and scatter it to every process's shards (a
    collective; the caller has checked that `directory` is such a checkpoint). The optimiser file is read with
    `weights_only=True`: tensors and plain values only."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    model_state = load_file(os.path.join(directory, MODEL_FILE)) if is_main_process else {}
    optimizer_state = (torch.load(os.path.join(directory, OPTIMIZER_FILE), map_location="cpu", weights_only=True)
                       if is_main_process else {})
    # two calls, not set_state_dict: given an empty model state (every process but the main one) that one skips the
    # model and leaves the main process broadcasting to nobody
    set_model_state_dict(model, model_state, options=_full_options(broadcast_from_rank0=True))
    # not strict: a parameter that never had a gradient (the head of a task this run does not train) has no Adam
    # state in the checkpoint, as it had none in the run that saved it
    set_optimizer_state_dict(model, optimizer, optimizer_state,
                             options=_full_options(broadcast_from_rank0=True, strict=False))


def unsharded_shell(model: torch.nn.Module) -> torch.nn.Module:
    """A plain instance of the sharded model's class on the meta device (it holds no memory), for `save_pretrained`
    beside the gathered weights: saving the sharded model itself would name fully_shard's class in config.json and
    copy torch's FSDP sources as the folder's code."""
    from torch.distributed.fsdp import FSDPModule

    plain_class = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))
    with torch.device("meta"):
        shell = plain_class(model.config)
    shell.generation_config = model.generation_config
    return shell
