"""Cross-attention visual-language fusion (DenseNet121 + CBAM, ALBERT, bidirectional cross-attention) for
transformers.

Importing the package registers its classes with transformers' Auto classes, so an installed package loads saved
folders without remote code. Every saved folder also carries the code files and an `auto_map`, so
`AutoModel.from_pretrained(folder_or_hub_id, trust_remote_code=True)` works where the package is not installed.
"""

from transformers import AutoConfig, AutoProcessor

from .configuration_xattn import PRESETS, XAttnConfig
from .modeling_xattn import (
    AUTO_CLASSES,
    XAttnCBAM,
    XAttnForConditionalGeneration,
    XAttnForImageTextRetrieval,
    XAttnForMultiTask,
    XAttnForSequenceClassification,
    XAttnFusionLayer,
    XAttnModel,
    XAttnPreTrainedModel,
    XAttnVisionEncoder,
    register_head,
)
from .processing_xattn import XAttnProcessor, to_rgb, train_albert_tokenizer


def register() -> None:
    """Register the classes with the local Auto classes (idempotent)."""
    import transformers

    try:
        AutoConfig.register(XAttnConfig.model_type, XAttnConfig)
    except ValueError:  # already registered
        pass
    for auto_name, model_class in AUTO_CLASSES.items():
        try:
            getattr(transformers, auto_name).register(XAttnConfig, model_class)
        except ValueError:
            pass
    try:
        AutoProcessor.register(XAttnConfig, XAttnProcessor)
    except ValueError:
        pass


register()

__all__ = [
    "PRESETS",
    "XAttnConfig",
    "XAttnCBAM",
    "XAttnVisionEncoder",
    "XAttnFusionLayer",
    "XAttnPreTrainedModel",
    "XAttnModel",
    "XAttnForSequenceClassification",
    "XAttnForImageTextRetrieval",
    "XAttnForConditionalGeneration",
    "XAttnForMultiTask",
    "XAttnProcessor",
    "register",
    "register_head",
    "to_rgb",
    "train_albert_tokenizer",
]
