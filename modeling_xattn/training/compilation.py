"""torch.compile in training: whether the run compiles its model, and how many graphs it has compiled (a
recompilation is one more graph)."""

from __future__ import annotations

from accelerate.utils import DynamoBackend


def is_compiled(accelerator) -> bool:
    """True when Accelerate compiles the prepared model (`--torch_compile`, or an `accelerate launch` config's
    dynamo settings)."""
    return accelerator.state.dynamo_plugin.backend != DynamoBackend.NO


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far: dynamo's own count (what PyTorch's tests read), one
    per traced frame and shape or mode it was traced for."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
