"""Cross-attention visual-language fusion model ("Cross-Attention Transformer-Based Visual-Language Fusion for
Multimodal Image Analysis", 2025), as a transformers custom-code model.

Data flow (one model, one file; read top to bottom):

    image -> DenseNet features -> CBAM (channel, then spatial attention) -> HxW region tokens -> linear + 2-D position
    text  -> ALBERT -> linear
    N x XAttnFusionLayer: text->image and image->text cross-attention (separate weights per direction, both reading
          the previous layer's states), per-stream self-attention, per-stream feed-forward
    pooled text ++ pooled image -> linear  (the paper's fused vector Y_C)

Heads: classification (Formula 1), image-text retrieval (Formula 2 + a matching score for re-ranking), captioning
(Formula 3; a causal BERT decoder from transformers that cross-attends to the fused tokens and is driven by
`GenerationMixin.generate`), and all three on one backbone (Formula 4).

The DenseNet comes from torchvision, ALBERT and the decoder from transformers; CBAM, the fusion layers, the heads and
their losses are this file's own.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from transformers import (AlbertModel, BertLMHeadModel, DynamicCache, EncoderDecoderCache, GenerationMixin,
                          PreTrainedModel, StaticCache)
from transformers import initialization as init
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, logging

from .configuration_xattn import XAttnConfig

logger = logging.get_logger(__name__)

# The attention implementations the fusion layers run (`attn_implementation=` at load time or
# `model.set_attn_implementation`); ALBERT and the caption decoder follow the same choice.
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
# The task heads (their weights' prefixes) and the config fields that weigh their losses in Formula 4. A checkpoint of
# one head loads into any other class: the other heads' weights are expected to be absent or unused, so they are
# neither listed as missing nor as unexpected, and a head whose weights are all 0 was never trained (`from_pretrained`).
HEAD_LOSS_WEIGHTS = {"classifier": ("lambda_ce",), "retrieval": ("lambda_cl", "lambda_itm"),
                     "captioner": ("lambda_seq",)}
# Heads added with `register_head`: each reads the pooled fused statement, as the classifier does.
STATEMENT_HEADS: dict[str, type] = {}
# CLIP's clamp of the learned logit scale: exp(t) <= 100, i.e. a temperature of at least 0.01.
MAX_LOGIT_SCALE = math.log(100.0)

# ======================================================================================================= outputs


@dataclass
class XAttnModelOutput(ModelOutput):
    """Output of [`XAttnModel`].

    Args:
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The fused vector Y_C: pooled text and pooled image vectors concatenated, then a linear layer.
        text_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, text_length, hidden_size)`, *optional*):
            The text stream after the last fusion layer (None when `modalities="image"`).
        image_last_hidden_state (`torch.FloatTensor` of shape `(batch_size, grid*grid, hidden_size)`, *optional*):
            The image-region stream after the last fusion layer (None when `modalities="text"`).
        text_attention_mask (`torch.LongTensor` of shape `(batch_size, text_length)`, *optional*):
            1 for real text tokens, 0 for padding.
        cbam_spatial_attention (`torch.FloatTensor` of shape `(batch_size, 1, grid, grid)`, *optional*):
            CBAM's spatial attention map (None without CBAM or without the image stream).
        text_to_image_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            One `(batch_size, num_heads, text_length, grid*grid)` map per fusion layer: each word's look-up into the
            image regions.
        image_to_text_attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            One `(batch_size, num_heads, grid*grid, text_length)` map per fusion layer.
    """

    pooler_output: torch.FloatTensor | None = None
    text_last_hidden_state: torch.FloatTensor | None = None
    image_last_hidden_state: torch.FloatTensor | None = None
    text_attention_mask: torch.LongTensor | None = None
    cbam_spatial_attention: torch.FloatTensor | None = None
    text_to_image_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_to_text_attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class XAttnSequenceClassifierOutput(ModelOutput):
    """Output of [`XAttnForSequenceClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given): Formula 1.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): class scores before softmax/sigmoid.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): the fused vector Y_C.
        text_to_image_attentions, image_to_text_attentions, cbam_spatial_attention: as in [`XAttnModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    text_to_image_attentions: tuple[torch.FloatTensor, ...] | None = None
    image_to_text_attentions: tuple[torch.FloatTensor, ...] | None = None
    cbam_spatial_attention: torch.FloatTensor | None = None


@dataclass
class XAttnRetrievalOutput(ModelOutput):
    """Output of [`XAttnForImageTextRetrieval`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, with `labels` or `return_loss=True`):
            λCL·loss_contrastive + λITM·loss_itm.
        loss_contrastive (`torch.FloatTensor` of shape `()`, *optional*): Formula 2 (or InfoNCE) over in-batch pairs.
        loss_itm (`torch.FloatTensor` of shape `()`, *optional*): cross-entropy of the matching head on the positive
            pairs and on the hardest in-batch negatives.
        logits_per_image (`torch.FloatTensor` of shape `(batch_size, batch_size)`): similarity of image i to text j
            (negative distance for the margin loss, cosine / temperature for InfoNCE); higher is closer.
        itm_logits (`torch.FloatTensor` of shape `(batch_size, 2)`): matching-head logits (no match, match) of the
            given (image i, text i) pairs from the fused representation.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`): L2-normalised image embeddings.
        text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`): L2-normalised text embeddings.
    """

    loss: torch.FloatTensor | None = None
    loss_contrastive: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


@dataclass
class XAttnCaptionOutput(ModelOutput):
    """Output of [`XAttnForConditionalGeneration`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given): Formula 3, the
            mean next-token cross-entropy over caption tokens.
        logits (`torch.FloatTensor` of shape `(batch_size, caption_length, vocab_size)`): next-token scores.
        encoder_hidden_states (`torch.FloatTensor` of shape `(batch_size, text_length + grid*grid, decoder_hidden)`):
            the fused tokens (prompt stream, then image stream) the decoder cross-attends to.
        encoder_attention_mask (`torch.LongTensor` of shape `(batch_size, text_length + grid*grid)`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    encoder_hidden_states: torch.FloatTensor | None = None
    encoder_attention_mask: torch.LongTensor | None = None


@dataclass
class XAttnMultiTaskOutput(ModelOutput):
    """Output of [`XAttnForMultiTask`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): Formula 4, λCE·LCE + λCL·LCL + λSEQ·LSEQ, plus
            λITM·LITM, over the tasks that have targets in this batch.
        loss_ce (`torch.FloatTensor` of shape `()`, *optional*): classification loss (Formula 1), with `labels`.
        loss_cl (`torch.FloatTensor` of shape `()`, *optional*): contrastive loss (Formula 2), with
            `caption_input_ids`.
        loss_itm (`torch.FloatTensor` of shape `()`, *optional*): image-text matching loss on the positives and
            sampled in-batch negatives, with `caption_input_ids`.
        loss_seq (`torch.FloatTensor` of shape `()`, *optional*): captioning loss (Formula 3), with `caption_input_ids`.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`, *optional*): classification scores.
        logits_per_image (`torch.FloatTensor` of shape `(batch_size, batch_size)`, *optional*): retrieval similarities.
        caption_logits (`torch.FloatTensor` of shape `(batch_size, caption_length, vocab_size)`, *optional*).
        image_embeds / text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*): the
            unimodal retrieval embeddings of the images and captions (Formula 2's inputs), with `caption_input_ids`.
    """

    loss: torch.FloatTensor | None = None
    loss_ce: torch.FloatTensor | None = None
    loss_cl: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_seq: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    caption_logits: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


# ======================================================================================================= vision


class XAttnCBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al., ECCV 2018): channel attention, then spatial attention.

    Channel:  M_c = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))        (shared MLP, reduction r)
    Spatial:  M_s = sigmoid(conv_kxk([mean_c(F'); max_c(F')]))
    Output:   F'' = M_s * (M_c * F)
    """

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.channel_mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False)
        )
        self.spatial_conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # features: (B, C, H, W)
        avg = features.mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        peak = features.amax(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        features = features * torch.sigmoid(self.channel_mlp(avg) + self.channel_mlp(peak))
        pooled = torch.cat([features.mean(dim=1, keepdim=True), features.amax(dim=1, keepdim=True)], dim=1)  # (B,2,H,W)
        spatial = torch.sigmoid(self.spatial_conv(pooled))  # (B, 1, H, W)
        return features * spatial, spatial


class XAttnVisionEncoder(nn.Module):
    """torchvision DenseNet features -> ReLU -> CBAM -> region tokens -> linear to the fusion width + 2-D position."""

    def __init__(self, config: XAttnConfig):
        super().__init__()
        densenet = torchvision.models.DenseNet(
            growth_rate=config.growth_rate,
            block_config=config.block_config,
            num_init_features=config.num_init_features,
            bn_size=config.bn_size,
            drop_rate=config.vision_dropout,
            memory_efficient=config.memory_efficient,
        )
        self.features = densenet.features  # the classifier is not used
        channels = densenet.classifier.in_features
        self.cbam = XAttnCBAM(channels, config.cbam_reduction, config.cbam_kernel_size) if config.use_cbam else None
        self.grid_size = config.grid_size
        self.projection = nn.Linear(channels, config.hidden_size)
        self.row_embeddings = nn.Embedding(self.grid_size, config.hidden_size)
        self.column_embeddings = nn.Embedding(self.grid_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.frozen_batch_norm = False  # `freeze_batch_norm`: DenseNet's BatchNorm layers stay in eval mode

    def freeze_batch_norm(self, enabled: bool = True):
        """Keep DenseNet's BatchNorm layers in eval mode while the model trains: they normalise with their running
        statistics (ImageNet's, for a pretrained tower) and never update them, while their scale and shift still train
        unless the tower is locked (open_clip's `freeze_bn_stats`, mmdetection's `norm_eval`)."""
        self.frozen_batch_norm = enabled
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_batch_norm:
            for module in self.features.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must have shape (batch, channels, height, width), got {tuple(pixel_values.shape)}")
        features = F.relu(self.features(pixel_values))  # (B, C, h, w); torchvision's DenseNet applies this ReLU too
        spatial = None
        if self.cbam is not None:
            features, spatial = self.cbam(features)
        batch, _, height, width = features.shape
        if height != self.grid_size or width != self.grid_size:
            raise ValueError(
                f"pixel_values of size {tuple(pixel_values.shape[-2:])} give a {height}x{width} feature grid, but the "
                f"model was configured for a {self.grid_size}x{self.grid_size} grid (image_size in the config); "
                "resize images with the model's processor"
            )
        tokens = self.projection(features.flatten(2).transpose(1, 2))  # (B, h*w, C) -> (B, h*w, D)
        rows = torch.arange(height, device=tokens.device)
        cols = torch.arange(width, device=tokens.device)
        position = self.row_embeddings(rows)[:, None, :] + self.column_embeddings(cols)[None, :, :]  # (h, w, D)
        tokens = tokens + position.reshape(height * width, -1)
        return self.dropout(self.layer_norm(tokens)), spatial


# ======================================================================================================= fusion


def eager_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention with explicit probabilities (which SDPA does not return). `query`/`key`/`value`: `(B, H, L, d)`;
    `attention_mask`: boolean `(B, 1, 1, Lk)`, True = attend. Scores and softmax are fp32 under autocast (bf16 rounds
    near-equal scores together). Returns the output `(B, Lq, H, d)` and the probabilities `(B, H, Lq, Lk)`."""
    scores = (query @ key.transpose(-1, -2)).float() * scaling  # (B, H, Lq, Lk)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1).to(value.dtype)
    attended = F.dropout(probs, dropout, module.training) @ value  # (B, H, Lq, d)
    return attended.transpose(1, 2).contiguous(), probs


class XAttnAttention(nn.Module):
    """Multi-head attention of `hidden_states` (queries) over `context` (keys/values).

    The kernel is the config's `attn_implementation`: `"sdpa"` (transformers' SDPA function) or `"eager"` (explicit
    probabilities). `output_attentions=True` always takes the eager path, since SDPA cannot return the maps; both
    paths give the same output (tested).
    """

    is_causal = False  # read by transformers' SDPA function

    def __init__(self, config: XAttnConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key_value = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.output = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_dropout_prob

    def project_query(self, hidden_states):
        """Queries `(B, H, Lq, d)` of `hidden_states` `(B, Lq, D)`."""
        batch, length, _ = hidden_states.shape
        return self.query(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def project_key_value(self, context):
        """Keys and values, stacked `(2, B, H, Lk, d)`, of `context` `(B, Lk, D)`."""
        batch, length, _ = context.shape
        return self.key_value(context).view(batch, length, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    def forward(self, hidden_states, context, context_mask=None, output_attentions=False, query=None,
                key_value=None):
        """`query` / `key_value`: this layer's projections of `hidden_states` / `context`, computed beforehand
        (`project_query`, `project_key_value`) when one input is shared by many calls (re-ranking a gallery)."""
        batch, q_len, width = hidden_states.shape
        query = self.project_query(hidden_states) if query is None else query  # (B, H, Lq, d)
        key, value = self.project_key_value(context) if key_value is None else key_value
        mask = None if context_mask is None else context_mask.bool()[:, None, None, :]  # (B, 1, 1, Lk); True = attend
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attended, probs = attention(self, query, key, value, mask, dropout=self.dropout_prob if self.training else 0.0,
                                    scaling=self.scaling)
        attended = attended.reshape(batch, q_len, width)  # (B, Lq, H, d) -> (B, Lq, D)
        return self.output(attended), probs if output_attentions else None


class XAttnSublayer(nn.Module):
    """Attention + dropout + residual + LayerNorm: post-norm, LN(h + attn(h, context)), as BERT and LXMERT; or, with
    `gated=True` (the fusion layers' cross-attention when `config.fusion_gate`), Flamingo's gated pre-norm residual
    h + tanh(g)·attn(LN(h), context) with g initialised at 0, which is exactly h until the gate opens."""

    def __init__(self, config: XAttnConfig, gated: bool = False):
        super().__init__()
        self.attention = XAttnAttention(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gate = nn.Parameter(torch.full((1,), float(config.fusion_gate_init))) if gated else None

    def query_input(self, hidden_states):
        """What the queries are projected from: the states, normalised first in the gated (pre-norm) form."""
        return hidden_states if self.gate is None else self.layer_norm(hidden_states)

    def forward(self, hidden_states, context, context_mask=None, output_attentions=False, query=None,
                key_value=None):
        attended, probs = self.attention(self.query_input(hidden_states), context, context_mask, output_attentions,
                                         query, key_value)
        if self.gate is None:
            return self.layer_norm(hidden_states + self.dropout(attended)), probs
        return hidden_states + torch.tanh(self.gate).to(attended.dtype) * self.dropout(attended), probs


class XAttnFeedForward(nn.Module):
    def __init__(self, config: XAttnConfig):
        super().__init__()
        self.dense_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_out = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states):
        return self.layer_norm(hidden_states + self.dropout(self.dense_out(F.gelu(self.dense_in(hidden_states)))))


class XAttnStreamBlock(nn.Module):
    """One stream's half of a fusion layer: cross-attention into the other stream (optional), self-attention
    (optional, `fusion_self_attention`), feed-forward."""

    def __init__(self, config: XAttnConfig, cross_attention: bool):
        super().__init__()
        self.cross_attention = XAttnSublayer(config, gated=config.fusion_gate) if cross_attention else None
        self.self_attention = XAttnSublayer(config) if config.fusion_self_attention else None
        self.feed_forward = XAttnFeedForward(config)

    def forward(self, states, mask, other, other_mask, output_attentions=False, query=None, key_value=None):
        cross_probs = None
        if self.cross_attention is not None:
            states, cross_probs = self.cross_attention(states, other, other_mask, output_attentions, query, key_value)
        if self.self_attention is not None:
            states, _ = self.self_attention(states, states, mask)
        return self.feed_forward(states), cross_probs


class XAttnFusionLayer(nn.Module):
    """Bidirectional cross-attention layer: text attends to image regions and image regions attend to text, with
    separate weights per direction; both directions read the previous layer's states. Streams absent from the config
    (`modalities`) are skipped; `fusion_type="concat"` keeps the same layer without the cross-attention sub-layers."""

    def __init__(self, config: XAttnConfig):
        super().__init__()
        cross = config.use_cross_attention
        self.text_block = XAttnStreamBlock(config, cross) if config.use_text else None
        self.image_block = XAttnStreamBlock(config, cross) if config.use_image else None

    def forward(self, text, text_mask, image, output_attentions=False, projections=None):
        """`projections`: this layer's cross-attention projections of its inputs, computed beforehand
        (`cross_projections`), by name: `text_query`, `image_key_value`, `image_query`, `text_key_value`."""
        projections = projections or {}
        text_to_image = image_to_text = None
        new_text, new_image = text, image
        if self.text_block is not None:
            new_text, text_to_image = self.text_block(text, text_mask, image, None, output_attentions,
                                                      projections.get("text_query"), projections.get("image_key_value"))
        if self.image_block is not None:
            new_image, image_to_text = self.image_block(image, None, text, text_mask, output_attentions,
                                                        projections.get("image_query"), projections.get("text_key_value"))
        return new_text, new_image, text_to_image, image_to_text

    def cross_projections(self, text=None, image=None) -> dict:
        """The cross-attention projections that depend on one stream alone (each stream's queries, and its keys
        and values for the other stream): computed once per gallery image and caption, they are reused by every
        pair that the first fusion layer scores. Empty without cross-attention."""
        out = {}
        if self.text_block is None or self.image_block is None or self.text_block.cross_attention is None:
            return out
        text_cross, image_cross = self.text_block.cross_attention, self.image_block.cross_attention
        if text is not None:
            out["text_query"] = text_cross.attention.project_query(text_cross.query_input(text))
            out["text_key_value"] = image_cross.attention.project_key_value(text)
        if image is not None:
            out["image_query"] = image_cross.attention.project_query(image_cross.query_input(image))
            out["image_key_value"] = text_cross.attention.project_key_value(image)
        return out


# ======================================================================================================= base model


@contextlib.contextmanager
def _checkpointed_calls(modules, checkpoint):
    """Run every call of `modules` under `checkpoint` while the block is open.

    transformers' ALBERT has no activation checkpointing of its own; its shared layer group is called once per layer,
    so wrapping the group's calls checkpoints each of the 12 layers (state-dict keys unchanged).
    """

    def wrap(forward):
        def checkpointed(hidden_states, attention_mask=None, **kwargs):
            return checkpoint(forward, hidden_states, attention_mask, **kwargs)

        return checkpointed

    for module in modules:
        module.forward = wrap(module.forward)  # an instance attribute shadows the class's forward
    try:
        yield
    finally:
        for module in modules:
            del module.forward


def expanded_attention_mask(config, attention_mask: torch.Tensor, query_length: int, dtype: torch.dtype,
                            memory: torch.Tensor | None = None, causal: bool = False) -> torch.Tensor:
    """A padding mask `(B, K)` as the 4-D mask `(B, 1, query_length, K)` transformers' ALBERT and BERT layers take,
    in the form `config`'s attention implementation wants (boolean for SDPA, additive in `dtype` for eager); causal
    for a decoder's own tokens, over `memory` for its cross-attention. transformers makes it inside each tower after
    asking whether it can skip the mask (`padding_mask.all()`), which reads the mask back to the host: on a GPU a wait
    for the whole queue, several times in every training step. Made here with that skip off, nothing waits."""
    queries = attention_mask.new_empty((attention_mask.shape[0], query_length, 0), dtype=dtype)  # shape and dtype
    if causal:
        return create_causal_mask(config=config, inputs_embeds=queries, attention_mask=attention_mask, cache=None,
                                  allow_is_causal_skip=False)
    return create_bidirectional_mask(config=config, inputs_embeds=queries, attention_mask=attention_mask,
                                     encoder_hidden_states=memory, allow_is_bidirectional_skip=False)


def full_precision(tensor: torch.Tensor):
    """A block in which autocast is off on `tensor`'s device, so the operations inside run in the dtype of their
    inputs (the callers cast to fp32)."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `tokens` `(B, L, D)` over the positions where `mask` `(B, L)` is 1 -> `(B, D)`."""
    weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, L, 1)
    return (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def masked_average(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where the boolean `mask` is true, 0 where it is nowhere true: a sum over a count clamped at
    1, so no branch depends on the data (the losses' masked means). `where`, not a product, so a value left out may
    be anything, inf included."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / mask.sum().clamp(min=1)


class XAttnPreTrainedModel(PreTrainedModel):
    config_class = XAttnConfig
    config: XAttnConfig
    base_model_prefix = "xattn"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["XAttnFusionLayer", "XAttnVisionEncoder"]
    _supports_sdpa = True
    # Each head's loss is a mean over its own rows, pairs or tokens, and Formula 4 mixes several of them, so there is
    # no single item count to normalise by: Trainer must divide the loss by the accumulation steps itself (forward
    # takes **kwargs, which would otherwise tell Trainer that the model consumes `num_items_in_batch`).
    accepts_loss_kwargs = False
    _keys_to_ignore_on_load_missing = [rf"^{prefix}\." for prefix in HEAD_LOSS_WEIGHTS]
    _keys_to_ignore_on_load_unexpected = [rf"^{prefix}\." for prefix in HEAD_LOSS_WEIGHTS]

    def post_init(self):
        super().post_init()
        self._default_caption_length()

    def _default_caption_length(self):
        """A generation config that sets no length (a new model's, or one saved before generation_config.json
        carried a length) lets captions be as long as the longest one trained on, not transformers' 20 tokens."""
        generation_config = getattr(self, "generation_config", None)  # only the models that caption have one
        if (generation_config is not None and generation_config.max_new_tokens is None
                and "max_length" not in generation_config.to_diff_dict()):
            generation_config.max_new_tokens = self.config.max_caption_length

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights (safetensors), config, generation config and the code files. The config's `auto_map` names
        every Auto class this package supports and its `custom_pipelines` the pipelines (`pipeline_xattn.py`), so any
        of them loads the folder with `trust_remote_code=True`."""
        from .pipeline_xattn import CUSTOM_PIPELINES  # this import also makes transformers copy the file

        self.config.auto_map = dict(AUTO_MAP)
        self.config.custom_pipelines = CUSTOM_PIPELINES
        return super().save_pretrained(save_directory, *args, **kwargs)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loading, plus one line naming each head that starts untrained: one the checkpoint does not
        hold at all (a classification checkpoint loaded for captioning), or one its training weighted 0 (a
        captions-only run saves a classifier it never trained: `lambda_ce=0` in its config). Other missing weights get
        transformers' own report."""
        model = super().from_pretrained(*args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        loaded._default_caption_length()  # the loaded generation_config.json replaced the one post_init filled
        absent = list(getattr(loaded, "_heads_not_in_checkpoint", ()))
        config = loaded.config
        untrained = [name for name, weights in HEAD_LOSS_WEIGHTS.items()
                     if all(getattr(config, weight, 1.0) == 0 for weight in weights) and name not in absent
                     and getattr(loaded, name, None) is not None]
        notes = []
        if absent:
            notes.append(f"the checkpoint holds no {', '.join(absent)} weights: "
                         f"{'these heads start' if len(absent) > 1 else 'this head starts'} untrained")
        if untrained:
            notes.append(f"its training gave the {', '.join(untrained)} a loss weight of 0: "
                         f"{'these heads were' if len(untrained) > 1 else 'this head was'} never trained")
        if notes:
            logger.warning(f"{cls.__name__}: {'; '.join(notes)}")
        return model

    def tie_weights(self, missing_keys=None, recompute_mapping=True):
        """transformers' tying. When loading a checkpoint that lacks a whole head (another head's checkpoint), both
        sides of the decoder's tied pairs are missing: its freshly initialised embedding is then the source, and the
        head is remembered for `from_pretrained`'s one-line note instead of a "corrupted checkpoint" warning."""
        if missing_keys is not None:
            state = self.state_dict()
            absent = [prefix for prefix in HEAD_LOSS_WEIGHTS
                      if (keys := [k for k in state if k.startswith(prefix + ".")]) and set(keys) <= set(missing_keys)]
            self._heads_not_in_checkpoint = absent
            # The sources were initialised as missing weights; declaring them present makes the targets tie to them.
            sources = {source for source in getattr(self, "all_tied_weights_keys", {}).values()
                       if source.split(".")[0] in absent}
            missing_keys = set(missing_keys) - sources
        return super().tie_weights(missing_keys=missing_keys, recompute_mapping=recompute_mapping)

    def _check_and_adjust_attn_implementation(self, attn_implementation, is_init_check=False, **kwargs):
        """Refuse attention kernels the fusion layers do not run, naming those they do."""
        if isinstance(attn_implementation, str) and attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation={attn_implementation!r} is not supported by {type(self).__name__}; "
                             f"use one of {', '.join(repr(name) for name in ATTN_IMPLEMENTATIONS)}")
        return super()._check_and_adjust_attn_implementation(attn_implementation, is_init_check, **kwargs)

    # ---------------------------------------------------------------- memory
    def set_memory_saving(self, enabled: bool = True):
        """Trade compute for activation memory in training: DenseNet's checkpointed dense layers
        (`memory_efficient`) and activation checkpointing of ALBERT's layers, the fusion layers and the caption
        decoder's layers. Outputs and gradients are unchanged (tested); a step costs roughly one extra forward."""
        self.config.memory_efficient = enabled
        for module in self.modules():
            if isinstance(module, torchvision.models.densenet._DenseLayer):
                module.memory_efficient = enabled
        enable = getattr(self, "activation_checkpointing_enable", None) or self.gradient_checkpointing_enable
        disable = getattr(self, "activation_checkpointing_disable", None) or self.gradient_checkpointing_disable
        enable() if enabled else disable()
        return self

    def lock_image_tower(self, freeze_bn_stats: bool = True):
        """Stop training DenseNet's weights (CBAM, the projection and the position embeddings still train), and with
        `freeze_bn_stats` its BatchNorm running statistics too, so a locked tower stays exactly as loaded (open_clip's
        `lock_image_tower`)."""
        tower = self.base_model.vision_model
        if tower is None:
            raise ValueError("lock_image_tower: this model has no image tower (config.modalities='text')")
        tower.features.requires_grad_(False)
        if freeze_bn_stats:
            tower.freeze_batch_norm(True)
        return self

    def lock_text_tower(self):
        """Stop training ALBERT's weights (the projection to the fusion width still trains)."""
        tower = self.base_model.text_model
        if tower is None:
            raise ValueError("lock_text_tower: this model has no text tower (config.modalities='image')")
        tower.requires_grad_(False)
        return self

    def freeze_image_batch_norm(self, enabled: bool = True):
        """DenseNet's BatchNorm layers normalise with their running statistics and never update them, while the tower
        itself may still train (see `XAttnVisionEncoder.freeze_batch_norm`)."""
        tower = self.base_model.vision_model
        if tower is None:
            raise ValueError("freeze_image_batch_norm: this model has no image tower (config.modalities='text')")
        tower.freeze_batch_norm(enabled)
        return self

    def _init_weights(self, module):
        if isinstance(module, XAttnSublayer) and module.gate is not None:
            # closed at 0: the layer starts as the concatenation model's
            init.constant_(module.gate, getattr(self.config, "fusion_gate_init", 0.0))
        elif isinstance(module, XAttnAttentionPool):
            init.normal_(module.probe, std=self.config.initializer_range)
        elif isinstance(module, XAttnRetrievalHead):
            if module.logit_scale is not None:
                init.constant_(module.logit_scale, module.initial_logit_scale)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, module.initial_logit_bias)
        if isinstance(module, nn.Conv2d):
            # torchvision's DenseNet and CBAM use Kaiming init for convolutions
            init.kaiming_normal_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class XAttnModel(XAttnPreTrainedModel):
    """The fused encoder: vision tower, text tower, fusion layers and the fusion projection (Y_C)."""

    def __init__(self, config: XAttnConfig):
        super().__init__(config)
        self.vision_model = XAttnVisionEncoder(config) if config.use_image else None
        if config.use_text:
            self.text_model = AlbertModel(config.text_config, add_pooling_layer=False)
            self.text_projection = nn.Linear(config.text_config.hidden_size, config.hidden_size)
        else:
            self.text_model = self.text_projection = None
        self.layers = nn.ModuleList([XAttnFusionLayer(config) for _ in range(config.num_fusion_layers)])
        streams = int(config.use_text) + int(config.use_image)
        self.fusion_projection = nn.Linear(streams * config.hidden_size, config.hidden_size)  # Y_C = W[t; v] + b
        self.gradient_checkpointing = False
        self.post_init()

    # ---------------------------------------------------------------- unimodal encoders
    def encode_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image region tokens `(B, grid*grid, hidden_size)` and CBAM's spatial map `(B, 1, grid, grid)` (or None)."""
        if self.vision_model is None:
            raise ValueError("this model has no image stream (config.modalities='text'); do not pass pixel_values")
        return self.vision_model(pixel_values)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text tokens `(B, L, hidden_size)` from ALBERT, projected to the fusion width."""
        if self.text_model is None:
            raise ValueError("this model has no text stream (config.modalities='image'); do not pass input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        checkpointing = (
            _checkpointed_calls(self.text_model.encoder.albert_layer_groups, self._gradient_checkpointing_func)
            if self.gradient_checkpointing and self.training else contextlib.nullcontext()
        )
        mask = expanded_attention_mask(self.text_model.config, attention_mask, input_ids.shape[1], self.text_model.dtype)
        with checkpointing:
            hidden = self.text_model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return self.text_projection(hidden)

    # ---------------------------------------------------------------- fusion
    def fuse(self, text_tokens, text_mask, image_tokens, output_attentions=False,
             first_layer_projections=None) -> XAttnModelOutput:
        """Run the fusion layers on already-encoded streams (either may be None for a one-modality model); the
        output is `forward`'s without CBAM's map, which belongs to the image encoder. `first_layer_projections`:
        the first layer's `cross_projections` of these very inputs, computed beforehand (gallery re-ranking)."""
        text_to_image, image_to_text = [], []
        for index, layer in enumerate(self.layers):
            if self.gradient_checkpointing and self.training:
                outputs = self._gradient_checkpointing_func(
                    layer.__call__, text_tokens, text_mask, image_tokens, output_attentions
                )
            else:
                outputs = layer(text_tokens, text_mask, image_tokens, output_attentions,
                                first_layer_projections if index == 0 else None)
            text_tokens, image_tokens, t2i, i2t = outputs
            text_to_image.append(t2i)
            image_to_text.append(i2t)
        pooled = []
        if text_tokens is not None:
            pooled.append(masked_mean(text_tokens, text_mask))
        if image_tokens is not None:
            pooled.append(image_tokens.mean(1))
        maps = output_attentions and self.config.use_cross_attention
        return XAttnModelOutput(
            pooler_output=self.fusion_projection(torch.cat(pooled, dim=-1)),  # (B, streams*D) -> (B, D)
            text_last_hidden_state=text_tokens,
            text_attention_mask=text_mask if text_tokens is not None else None,
            image_last_hidden_state=image_tokens,
            text_to_image_attentions=tuple(text_to_image) if maps else None,
            image_to_text_attentions=tuple(image_to_text) if maps else None,
        )

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_hidden_states: torch.Tensor | None = None,
        output_attentions: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> XAttnModelOutput | tuple:
        r"""
        pixel_values (`(batch_size, 3, image_size, image_size)`): images, as the processor prepares them.
        input_ids / attention_mask (`(batch_size, text_length)`): the text (statement, tweet, question or prompt).
        image_hidden_states (`(batch_size, grid*grid, hidden_size)`, *optional*): output of `encode_image`, to fuse
            an already-encoded image with new texts without running DenseNet again.
        output_attentions (`bool`): return both cross-attention directions per layer.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        text_tokens = image_tokens = spatial = None
        if self.config.use_text:
            if input_ids is None:
                raise ValueError("input_ids are required: this model fuses text (config.modalities="
                                 f"{self.config.modalities!r})")
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            text_tokens = self.encode_text(input_ids, attention_mask)
        if self.config.use_image:
            if image_hidden_states is not None:
                image_tokens = image_hidden_states
            elif pixel_values is not None:
                image_tokens, spatial = self.encode_image(pixel_values)
            else:
                raise ValueError("pixel_values are required: this model fuses images (config.modalities="
                                 f"{self.config.modalities!r})")
        fused = self.fuse(text_tokens, attention_mask, image_tokens, output_attentions)
        output = dataclasses.replace(fused, cbam_spatial_attention=spatial)  # rebuilt, so to_tuple() keeps the order
        return output if return_dict else output.to_tuple()


# ======================================================================================================= heads


class XAttnClassificationHead(nn.Module):
    """MLP on the fused vector (as LXMERT's answer head) and the loss of Formula 1."""

    def __init__(self, config: XAttnConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.layer_norm = nn.LayerNorm(2 * config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out = nn.Linear(2 * config.hidden_size, config.num_labels)

    def forward(self, fused):
        return self.out(self.dropout(self.layer_norm(F.gelu(self.dense(fused)))))

    @staticmethod
    def loss(logits, labels, problem_type=None):
        """Formula 1: cross-entropy (labels `(B,)`, -100 ignored) or, for soft VQA scores `(B, num_labels)`, binary
        cross-entropy summed over answers and averaged over the rows (the usual VQA objective; a row of -100 is
        ignored). A `masked_average` over the labelled rows, so a batch without one gives 0 and no branch depends on
        the data (the step compiles as one graph)."""
        if problem_type is None:
            problem_type = "multi_label_classification" if labels.dim() == 2 and labels.is_floating_point() else "single_label_classification"
        if problem_type == "multi_label_classification":
            kept = ~(labels == -100).any(-1)  # (B,): a row of -100 scores has no target
            targets = torch.where(kept[:, None], labels.float(), torch.zeros_like(labels, dtype=torch.float))
            per_row = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none").sum(-1)
            return masked_average(per_row, kept)
        if problem_type == "single_label_classification":
            per_row = F.cross_entropy(logits.float(), labels.long(), ignore_index=-100, reduction="none")
            return masked_average(per_row, labels != -100)
        raise ValueError(f"problem_type={problem_type!r} is not supported; use single_ or multi_label_classification")


class XAttnAttentionPool(nn.Module):
    """A learned query (`probe`) attends over a stream's tokens: one vector per row (CLIP's and SigLIP's attention
    pooling). Unlike the mean, it can weigh the regions or words that tell one row from another over what every
    token shares."""

    def __init__(self, config: XAttnConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = XAttnAttention(config)

    def forward(self, tokens, mask=None):
        probe = self.probe.to(tokens.dtype).expand(len(tokens), -1, -1)  # (B, 1, D)
        pooled, _ = self.attention(probe, tokens, mask)
        return pooled[:, 0]  # (B, D)


class XAttnRetrievalHead(nn.Module):
    """Unimodal embeddings for the contrastive loss (Formula 2) and a matching (ITM) score from the fused vector."""

    def __init__(self, config: XAttnConfig):
        super().__init__()
        self.config = config
        attention = config.retrieval_pooling == "attention"
        self.image_pool = XAttnAttentionPool(config) if attention else None
        self.text_pool = XAttnAttentionPool(config) if attention else None
        self.image_projection = nn.Linear(config.hidden_size, config.projection_dim)
        self.text_projection = nn.Linear(config.hidden_size, config.projection_dim)
        self.itm = nn.Linear(config.hidden_size, 2)
        # A learned logit scale t (used as exp(t), clamped at 100) for InfoNCE as CLIP learns it, and SigLIP's scale
        # and bias for the pairwise sigmoid loss; none for the margin losses or a fixed temperature.
        sigmoid = config.contrastive_loss == "sigmoid"
        learned = sigmoid or (config.contrastive_loss == "infonce" and config.learnable_temperature)
        self.initial_logit_scale = math.log(10.0) if sigmoid else math.log(1.0 / config.contrastive_temperature)
        self.initial_logit_bias = -10.0
        self.logit_scale = nn.Parameter(torch.tensor(self.initial_logit_scale)) if learned else None
        self.logit_bias = nn.Parameter(torch.tensor(self.initial_logit_bias)) if sigmoid else None

    # Embeddings, distances, similarities and the losses on them are fp32 even under bf16 autocast: bf16 keeps 8 bits
    # of mantissa, so a cosine of 0.9991 rounds to 1.0 and a distance of 0.04 to 0.

    def embed_image(self, image_tokens):
        pooled = image_tokens.mean(1) if self.image_pool is None else self.image_pool(image_tokens)  # (B, D)
        projected = self.image_projection(pooled)
        with full_precision(projected):
            return F.normalize(projected.float(), dim=-1)  # (B, P)

    def embed_text(self, text_tokens, mask):
        pooled = masked_mean(text_tokens, mask) if self.text_pool is None else self.text_pool(text_tokens, mask)
        projected = self.text_projection(pooled)
        with full_precision(projected):
            return F.normalize(projected.float(), dim=-1)  # (B, P)

    def scale(self) -> torch.Tensor | float:
        """The factor on the cosine: exp(t) clamped at 100 when learned, else 1 / contrastive_temperature."""
        if self.logit_scale is None:
            return 1.0 / self.config.contrastive_temperature
        return self.logit_scale.float().clamp(max=MAX_LOGIT_SCALE).exp()

    def distance(self, image_embeds, text_embeds):
        """Pairwise distances `(N_images, N_texts)` between L2-normalised embeddings, from one matrix product (for
        galleries; `pair_distance` is the exact form the loss differentiates)."""
        with full_precision(image_embeds):
            cosine = image_embeds.float() @ text_embeds.float().T
            if self.config.contrastive_distance == "euclidean":
                return (2.0 - 2.0 * cosine).clamp(min=0.0).sqrt()  # ||a-b|| for unit vectors
            return 1.0 - cosine

    def pair_distance(self, image_embeds, text_embeds):
        """The same distances computed from the differences `(B, B, P)`: exact near 0, and with a finite gradient
        there (sqrt(2 - 2cos) has an infinite one as the two vectors meet). For in-batch losses."""
        if self.config.contrastive_distance != "euclidean":
            return self.distance(image_embeds, text_embeds)  # 1 - cos is exact as it is
        with full_precision(image_embeds):
            return torch.linalg.vector_norm(image_embeds.float()[:, None] - text_embeds.float()[None], dim=-1)

    def similarity(self, image_embeds, text_embeds):
        """Higher is closer: -distance (margin losses), cosine / temperature (InfoNCE) or the sigmoid loss's logit
        t·cos + b; fp32."""
        if self.config.contrastive_loss in ("infonce", "sigmoid"):
            with full_precision(image_embeds):
                logits = image_embeds.float() @ text_embeds.float().T * self.scale()
                return logits if self.logit_bias is None else logits + self.logit_bias.float()
        return -self.distance(image_embeds, text_embeds)

    def contrastive_loss(self, image_embeds, text_embeds, negatives_mask, rows=None):
        """Formula 2 over the B x B in-batch (image i, text j) pairs, y = 1 for matching pairs (the diagonal and
        any pair `negatives_mask` does not call a negative: the same image, or an identical caption), 0 otherwise:

            "margin" (the paper's):   L = 1/N Σ [y·D + (1−y)·max(0, m − D)]
            "margin_squared":         L = 1/N Σ [y·D² + (1−y)·max(0, m − D)²]
            "infonce":                (CE(S, diag) + CE(Sᵀ, diag)) / 2 with S = cos / τ, matches other than the
                                      diagonal masked out
            "sigmoid" (SigLIP):       L = −1/B Σ log σ(z·(t·cos + b)), z = 1 for y = 1 and −1 for y = 0

        N = B², D the Euclidean distance between the L2-normalised embeddings (or 1 − cos), m the margin.

        `rows` `(B,)` (optional): the rows that take part (those with a caption); the others are left out of every
        sum and count as masks, not by indexing, so the batch keeps its shape."""
        batch = len(image_embeds)
        rows = torch.ones(batch, dtype=torch.bool, device=image_embeds.device) if rows is None else rows
        pairs = rows[:, None] & rows[None, :]  # (B, B): both rows take part
        eye = torch.eye(batch, dtype=torch.bool, device=image_embeds.device)
        with full_precision(image_embeds):
            matching = ~negatives_mask & pairs
            if self.config.contrastive_loss == "infonce":
                # out of each row's softmax: its other matches, and the rows that take no part (its own diagonal
                # stays, so no row is all -inf)
                left_out = (matching | ~pairs) & ~eye
                logits = self.similarity(image_embeds, text_embeds).masked_fill(left_out, float("-inf"))
                targets = torch.arange(batch, device=logits.device)
                per_row = (F.cross_entropy(logits, targets, reduction="none")
                           + F.cross_entropy(logits.T, targets, reduction="none")) / 2
                return masked_average(per_row, rows)
            if self.config.contrastive_loss == "sigmoid":
                signs = matching.float() * 2.0 - 1.0  # (B, B): 1 for a match, -1 for a negative
                per_pair = -F.logsigmoid(signs * self.similarity(image_embeds, text_embeds))
                return torch.where(pairs, per_pair, torch.zeros_like(per_pair)).sum() / rows.sum().clamp(min=1)
            distance = self.pair_distance(image_embeds, text_embeds)  # (B, B)
            hinge = F.relu(self.config.contrastive_margin - distance)
            if self.config.contrastive_loss == "margin_squared":
                distance, hinge = distance.pow(2), hinge.pow(2)
            return masked_average(torch.where(matching, distance, hinge), pairs)

    def matching_pairs(self, image_embeds, text_embeds, negatives_mask, rows=None):
        """The (image, text) pairs the matching head trains on: every given pair (a match), then for each row one
        sampled text for its image and one sampled image for its text (`sample_negatives`; the hardest in
        evaluation). Always 3B pairs, so the shapes never depend on the data: `counted` is true for the pairs that
        count (the rows in `rows`, the negatives of the rows that have a real one). Returns `(image_index,
        text_index, targets, counted)`, targets 1 = match."""
        text_for_image, image_for_text, valid = sample_negatives(
            image_embeds, text_embeds, negatives_mask, self.config.contrastive_temperature, draw=self.training,
            uniform=getattr(self.config, "itm_negatives", "hard") == "random")
        index = torch.arange(len(image_embeds), device=image_embeds.device)
        rows = torch.ones_like(valid) if rows is None else rows
        image_index = torch.cat([index, index, image_for_text])
        text_index = torch.cat([index, text_for_image, index])
        targets = torch.cat([torch.ones_like(index), torch.zeros_like(index), torch.zeros_like(index)])
        counted = torch.cat([rows, valid, valid])
        return image_index, text_index, targets, counted

    def matching_loss(self, fused_pooled, targets, counted):
        """Cross-entropy of the matching head on fused pairs `(P, hidden_size)`, a mean over the `counted` pairs;
        returns `(loss, logits (P, 2))`."""
        logits = self.itm(fused_pooled)
        return masked_average(F.cross_entropy(logits.float(), targets, reduction="none"), counted), logits


class XAttnCaptionHead(nn.Module):
    """A causal BERT decoder (transformers' `BertLMHeadModel`, as BLIP's text decoder) cross-attending to the fused
    tokens of both streams."""

    def __init__(self, config: XAttnConfig):
        super().__init__()
        self.config = config
        decoder_width = config.decoder_config.hidden_size
        self.projection = nn.Linear(config.hidden_size, decoder_width) if decoder_width != config.hidden_size else nn.Identity()
        self.text_decoder = BertLMHeadModel(config.decoder_config)
        # transformers picks a loss from the class name, and "BertLMHeadModel" names none (it warns, then falls back
        # to the causal-LM loss): name it
        self.text_decoder.loss_type = "ForCausalLM"

    def memory(self, fused: XAttnModelOutput):
        """The fused tokens the decoder reads: the prompt stream then the image stream, with their mask."""
        states, masks = [], []
        if fused.text_last_hidden_state is not None:
            states.append(fused.text_last_hidden_state)
            masks.append(fused.text_attention_mask.long())
        if fused.image_last_hidden_state is not None:
            image = fused.image_last_hidden_state
            states.append(image)
            masks.append(torch.ones(image.shape[:2], dtype=torch.long, device=image.device))
        return self.projection(torch.cat(states, dim=1)), torch.cat(masks, dim=1)

    def forward(self, memory, memory_mask, decoder_input_ids, decoder_attention_mask=None, labels=None):
        """Formula 3: the causal-LM cross-entropy, token t predicting token t+1 (-100 ignored), with smoothed
        targets under `caption_label_smoothing` (as BLIP's decoder). The decoder's own loss is this mean; here it is
        a `masked_average` over the target tokens, so a batch with no caption gives 0 (not 0/0) without a branch on
        the data."""
        smoothing = getattr(self.config, "caption_label_smoothing", 0.0)
        decoder_config, length, dtype = self.text_decoder.config, decoder_input_ids.shape[1], self.text_decoder.dtype
        if decoder_attention_mask is None:
            decoder_attention_mask = torch.ones_like(decoder_input_ids)
        out = self.text_decoder(
            input_ids=decoder_input_ids,
            attention_mask=expanded_attention_mask(decoder_config, decoder_attention_mask, length, dtype, causal=True),
            encoder_hidden_states=memory,
            encoder_attention_mask=expanded_attention_mask(decoder_config, memory_mask, length, dtype, memory=memory),
            return_dict=True,
        )
        if labels is not None:
            logits, targets = out.logits[:, :-1].float(), labels[:, 1:].reshape(-1)
            per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, ignore_index=-100,
                                        label_smoothing=smoothing, reduction="none")
            out.loss = masked_average(per_token, targets != -100)
        return out


def caption_labels(caption_input_ids, caption_attention_mask, pad_token_id):
    """Decoder labels from the tokenised caption: padding -> -100 (the decoder shifts them itself)."""
    labels = caption_input_ids.clone()
    if caption_attention_mask is not None:
        labels[caption_attention_mask == 0] = -100
    labels[caption_input_ids == pad_token_id] = -100
    return labels


def default_prompt(model_config: XAttnConfig, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty prompt, `[CLS] [SEP]`, for captioning without a question."""
    ids = torch.tensor([[model_config.bos_token_id, model_config.eos_token_id]], device=device).repeat(batch_size, 1)
    return ids, torch.ones_like(ids)


def negative_pairs(image_ids=None, text_ids=None, text_mask=None, batch_size=None, device=None):
    """`(B, B)` mask of the in-batch pairs (image i, text j) that are real negatives: image i and image j have
    different ids (no two captions of one image) and text i and text j differ (no two images with the same caption,
    which would have the same text embedding). Without `image_ids` each row is its own image."""
    if image_ids is None:
        image_ids = torch.arange(batch_size, device=device)
    negatives = image_ids[:, None] != image_ids[None, :]  # (B, B)
    if text_ids is not None:
        tokens = text_ids if text_mask is None else text_ids.masked_fill(text_mask == 0, -1)
        same_text = (tokens[:, None, :] == tokens[None, :, :]).all(-1)  # (B, B): identical token sequences
        negatives &= ~same_text
    return negatives


def sample_negatives(image_embeds, text_embeds, negatives, temperature, draw: bool = True, uniform: bool = False):
    """ITM negatives drawn in proportion to similarity among each row's real negatives (ALBEF/BLIP): for image i a
    text from softmax(cos(i, .) / temperature), for text j an image likewise. Hard negatives are likely, but not always
    the single closest pair. The draw uses torch's global generator (the training loop seeds it every step, so a
    resumed run repeats it). With `draw=False` (evaluation) each row takes its most similar real negative, so an
    evaluation loss is the same every time it is computed. Returns `(text_for_image, image_for_text, valid)`: every
    row gets a draw (the shapes never depend on the data), but one with no real negative draws uniformly and is not
    valid, so its pair must not count. `uniform=True` draws among the real negatives alike (`itm_negatives="random"`)."""
    with torch.no_grad(), full_precision(image_embeds):
        cosine = (image_embeds.float() @ text_embeds.float().T) / temperature  # (B, B), fp32 under autocast
        logits = cosine.masked_fill(~negatives, float("-inf"))
        valid = negatives.any(dim=1) & negatives.any(dim=0)
        if uniform and draw:  # `uniform`: every real negative alike (evaluation still takes the most similar)
            logits = torch.zeros_like(logits).masked_fill(~negatives, float("-inf"))
        safe = torch.where(negatives, logits, torch.zeros_like(logits))
        weights_i2t = torch.where(negatives, (logits - safe.amax(1, keepdim=True)).exp(), torch.zeros_like(logits))
        weights_t2i = torch.where(negatives, (logits - safe.amax(0, keepdim=True)).exp(), torch.zeros_like(logits)).T
        # a row without any negative has no weight to draw by: it draws uniformly (and is not valid)
        weights_i2t = torch.where(negatives.any(1, keepdim=True), weights_i2t, torch.ones_like(weights_i2t))
        weights_t2i = torch.where(negatives.any(0)[:, None], weights_t2i, torch.ones_like(weights_t2i))
        # non-finite embeddings (a diverged step, whose loss is not finite either) draw uniformly too: multinomial
        # would stop on them (on a GPU with a device-side assert), before the loop's next log names the step
        weights_i2t = torch.where(torch.isfinite(weights_i2t), weights_i2t, torch.ones_like(weights_i2t))
        weights_t2i = torch.where(torch.isfinite(weights_t2i), weights_t2i, torch.ones_like(weights_t2i))
        if draw:
            text_for_image = torch.multinomial(weights_i2t, 1).squeeze(1)
            image_for_text = torch.multinomial(weights_t2i, 1).squeeze(1)
        else:
            text_for_image, image_for_text = weights_i2t.argmax(1), weights_t2i.argmax(1)
    return text_for_image, image_for_text, valid


# ======================================================================================================= task models


class XAttnForSequenceClassification(XAttnPreTrainedModel):
    """Image + text -> label: 3-way sentiment, or VQA answers (single label, or soft scores with
    `problem_type="multi_label_classification"`)."""

    def __init__(self, config: XAttnConfig):
        super().__init__(config)
        self.xattn = XAttnModel(config)
        self.classifier = XAttnClassificationHead(config)
        self.post_init()

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None, output_attentions=False,
                return_dict=None, **kwargs) -> XAttnSequenceClassifierOutput | tuple:
        r"""labels (`(batch_size,)` class ids, or `(batch_size, num_labels)` soft scores), optional."""
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        encoded = self.xattn(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                             output_attentions=output_attentions, return_dict=True)
        logits = self.classifier(encoded.pooler_output)
        loss = None if labels is None else self.classifier.loss(logits, labels, self.config.problem_type)
        output = XAttnSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            pooler_output=encoded.pooler_output,
            text_to_image_attentions=encoded.text_to_image_attentions,
            image_to_text_attentions=encoded.image_to_text_attentions,
            cbam_spatial_attention=encoded.cbam_spatial_attention,
        )
        return output if return_dict else output.to_tuple()


class _RetrievalMixin:
    """Retrieval API for models holding `self.xattn` and `self.retrieval`: the losses, unimodal embeddings and the
    matching score (two-stage gallery search over them is `modeling_xattn.training.gallery`)."""

    def _retrieval_losses(self, image_tokens, text_tokens, text_mask, image_ids=None, input_ids=None, rows=None):
        """Formula 2 on the unimodal embeddings and the matching loss on the given pairs and sampled in-batch
        negatives, fused once. `image_tokens` `(B, N, D)` and `text_tokens` `(B, L, D)` are encoded, not fused;
        pairs sharing an image id or an identical text are never each other's negatives. `rows` `(B,)` (optional):
        the rows that take part; the others are masked out of both losses. Returns the retrieval output without its
        weighted `loss`."""
        image_embeds = self.retrieval.embed_image(image_tokens)
        text_embeds = self.retrieval.embed_text(text_tokens, text_mask)
        negatives = negative_pairs(image_ids, input_ids, text_mask, len(image_tokens), image_tokens.device)
        if rows is not None:
            negatives = negatives & rows[:, None] & rows[None, :]
        image_index, text_index, targets, counted = self.retrieval.matching_pairs(image_embeds, text_embeds, negatives,
                                                                                 rows)
        # index_select, not tensor[index]: the backward of advanced indexing accumulates the repeated rows with
        # index_put_ across threads in no fixed order (a seeded multi-threaded CPU run then differs from run to
        # run by ~1e-6), where index_select's backward (index_add_) sums them in order
        fused = self.xattn.fuse(text_tokens.index_select(0, text_index), text_mask.index_select(0, text_index),
                                image_tokens.index_select(0, image_index))
        loss_itm, itm_logits = self.retrieval.matching_loss(fused.pooler_output, targets, counted)
        return XAttnRetrievalOutput(
            loss_contrastive=self.retrieval.contrastive_loss(image_embeds, text_embeds, negatives, rows),
            loss_itm=loss_itm,
            logits_per_image=self.retrieval.similarity(image_embeds, text_embeds),
            itm_logits=itm_logits[: len(image_tokens)],
            image_embeds=image_embeds,
            text_embeds=text_embeds,
        )

    def get_image_features(self, pixel_values=None, image_hidden_states=None) -> torch.Tensor:
        """L2-normalised image embeddings `(B, projection_dim)`; pass `image_hidden_states` from
        `xattn.encode_image` to reuse an encoded image."""
        if image_hidden_states is None:
            image_hidden_states, _ = self.xattn.encode_image(pixel_values)
        return self.retrieval.embed_image(image_hidden_states)

    def get_text_features(self, input_ids, attention_mask=None) -> torch.Tensor:
        """L2-normalised text embeddings `(B, projection_dim)`."""
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.retrieval.embed_text(self.xattn.encode_text(input_ids, attention_mask), attention_mask)

    def itm_score(self, input_ids, attention_mask=None, pixel_values=None, image_hidden_states=None) -> torch.Tensor:
        """Probability `(B,)` that image i and text i match, from the fused representation."""
        encoded = self.xattn(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                             image_hidden_states=image_hidden_states, return_dict=True)
        return self.retrieval.itm(encoded.pooler_output).float().softmax(-1)[:, 1]


class XAttnForImageTextRetrieval(_RetrievalMixin, XAttnPreTrainedModel):
    """Image-text matching: unimodal embeddings trained with Formula 2 for fast shortlisting, and a cross-attention
    matching score (`itm_score`) trained on in-batch hard negatives for re-ranking."""

    def __init__(self, config: XAttnConfig):
        super().__init__(config)
        if config.modalities != "both":
            raise ValueError(f"XAttnForImageTextRetrieval needs both towers; config.modalities={config.modalities!r}")
        self.xattn = XAttnModel(config)
        self.retrieval = XAttnRetrievalHead(config)
        self.post_init()

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None, return_loss=None,
                return_dict=None, **kwargs) -> XAttnRetrievalOutput | tuple:
        r"""
        pixel_values / input_ids / attention_mask: a batch of matching (image i, text i) pairs.
        labels (`(batch_size,)`, *optional*): which image each pair shows (any integer id). Pairs with equal labels
            match each other and are never negatives (several captions of one image in a batch), nor are pairs with
            identical texts; `torch.arange(batch_size)` when every pair has its own image. Giving labels computes the
            loss, as for every transformers model (and so under `Trainer`).
        return_loss (`bool`, *optional*): compute the loss without labels (each pair its own image), or not at all
            (`False`). Defaults to "when labels are given".
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return_loss = labels is not None if return_loss is None else return_loss
        attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        image_tokens, _ = self.xattn.encode_image(pixel_values)
        text_tokens = self.xattn.encode_text(input_ids, attention_mask)
        if return_loss:
            losses = self._retrieval_losses(image_tokens, text_tokens, attention_mask, labels, input_ids)
            output = dataclasses.replace(
                losses, loss=self.config.lambda_cl * losses.loss_contrastive + self.config.lambda_itm * losses.loss_itm)
        else:
            image_embeds = self.retrieval.embed_image(image_tokens)
            text_embeds = self.retrieval.embed_text(text_tokens, attention_mask)
            output = XAttnRetrievalOutput(
                logits_per_image=self.retrieval.similarity(image_embeds, text_embeds),
                itm_logits=self.retrieval.itm(self.xattn.fuse(text_tokens, attention_mask, image_tokens).pooler_output),
                image_embeds=image_embeds,
                text_embeds=text_embeds,
            )
        return output if return_dict else output.to_tuple()


class _CaptionGenerationMixin(GenerationMixin):
    """`generate()` for models holding `self.xattn` and `self.captioner`: the image (and prompt) are encoded once,
    then transformers' `GenerationMixin.generate` drives the decoder (greedy, beam search, sampling, KV cache).
    Inheriting `GenerationMixin` gives the model a `generation_config`, saved and loaded with it."""

    def _caption_memory(self, image_tokens, input_ids=None, attention_mask=None):
        """Fuse encoded images `(B, N, D)` with a prompt or question (default: the empty prompt) and return what the
        decoder cross-attends to: `(memory (B, L + N, D_dec), memory_mask)`."""
        text_tokens = None
        if self.config.use_text:
            if input_ids is None:
                input_ids, attention_mask = default_prompt(self.config, len(image_tokens), image_tokens.device)
            attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
            text_tokens = self.xattn.encode_text(input_ids, attention_mask)
        return self.captioner.memory(self.xattn.fuse(text_tokens, attention_mask, image_tokens))

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, generation_config=None,
                 **generate_kwargs) -> torch.LongTensor:
        """Caption `pixel_values`, optionally conditioned on a prompt/question (`input_ids`, encoded by the fused
        encoder, never by the decoder).

        Decoding starts from the model's `generation_config` (saved with the model as `generation_config.json`;
        `max_new_tokens` defaults to `config.max_caption_length`), or the `generation_config` given; keyword arguments
        override single fields (`num_beams`, `max_new_tokens`, `do_sample`, `use_cache`, ...), as in every
        transformers model. Returns token ids starting with `bos_token_id`; decode them with the processor's
        `batch_decode(..., skip_special_tokens=True)`.

        `cache_implementation="static"` decodes with transformers' `StaticCache` (self-attention sized for the
        caption, cross-attention for the fused memory): on a GPU, transformers then compiles the decoding step
        (`torch.compile`, CUDA graphs; `compile_config` tunes it, `disable_compile=True` turns it off). Tokens are
        the same as with the dynamic cache (the default) and without a cache (`use_cache=False`)."""
        image_tokens, _ = self.xattn.encode_image(pixel_values)  # encoded once for every decoding step and beam
        memory, memory_mask = self._caption_memory(image_tokens, input_ids, attention_mask)
        generation_config = copy.deepcopy(self.generation_config if generation_config is None else generation_config)
        model_kwargs = generation_config.update(**generate_kwargs)  # call-time fields override; the rest are inputs
        generation_config.validate()
        start = torch.full((len(memory), 1), self.config.bos_token_id, dtype=torch.long, device=memory.device)
        decoder = self.captioner.text_decoder
        implementation = generation_config.cache_implementation
        if implementation not in (None, "dynamic", "static"):
            raise ValueError(f"cache_implementation={implementation!r}: this model decodes with 'dynamic' (default) or "
                             "'static'")
        generation_config.cache_implementation = None  # the cache is made here; generate() would make the wrong kind
        if generation_config.use_cache is not False and not any(k in model_kwargs for k in _CACHE_ARGS):  # None: on
            # The decoder cross-attends, so its cache must hold self- and cross-attention keys; generate() would make
            # a self-attention-only cache for a decoder-only config.
            if implementation == "static":
                length = (generation_config.max_new_tokens + start.shape[1] if generation_config.max_new_tokens
                          else generation_config.max_length)
                # a fixed ceiling (generation_config.max_cache_len) keeps the cache's shape, and so the compiled
                # step, the same across calls with different lengths
                length = max(length, generation_config.max_cache_len or 0)
                cache = EncoderDecoderCache(StaticCache(config=decoder.config, max_cache_len=length),
                                            StaticCache(config=decoder.config, max_cache_len=memory.shape[1]))
            else:
                cache = EncoderDecoderCache(DynamicCache(config=decoder.config), DynamicCache(config=decoder.config))
            model_kwargs[_cache_argument(decoder)] = cache
        return decoder.generate(
            input_ids=start,
            generation_config=generation_config,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            **model_kwargs,
        )


_CACHE_ARGS = ("cache", "past_key_values")


def _cache_argument(decoder) -> str:
    """Name of the decoder's cache argument: `cache` in recent transformers 5 releases, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


# The decoder's output layer shares its input embedding; declared at the top level too (as BLIP does) so that loading
# re-ties them.
_CAPTIONER_TIED_WEIGHTS = {
    "captioner.text_decoder.cls.predictions.decoder.weight": "captioner.text_decoder.bert.embeddings.word_embeddings.weight",
    "captioner.text_decoder.cls.predictions.decoder.bias": "captioner.text_decoder.cls.predictions.bias",
}


class XAttnForConditionalGeneration(_CaptionGenerationMixin, XAttnPreTrainedModel):
    """Captioning (and open-ended answers): the fused encoder sees the image and an optional prompt or question; a
    causal decoder cross-attends to the fused tokens. The target caption never enters the bidirectional encoder."""

    _tied_weights_keys = _CAPTIONER_TIED_WEIGHTS

    def __init__(self, config: XAttnConfig):
        super().__init__(config)
        self.xattn = XAttnModel(config)
        self.captioner = XAttnCaptionHead(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.captioner.text_decoder.get_input_embeddings()

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, labels=None, return_dict=None, **kwargs) -> XAttnCaptionOutput | tuple:
        r"""
        input_ids / attention_mask (*optional*): a prompt or question for the fused encoder (default: empty).
        decoder_input_ids / decoder_attention_mask: the tokenised caption, `[CLS] w1 ... wn [SEP] <pad>...`.
        labels (*optional*): caption ids with -100 on ignored positions (Formula 3). Passing `labels` alone is
            enough to train: `decoder_input_ids` are then derived from them (-100 -> padding).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("pass decoder_input_ids (or labels) with the caption tokens; use generate() to caption")
            decoder_input_ids = labels.masked_fill(labels == -100, self.config.pad_token_id)
            decoder_attention_mask = (labels != -100).long() if decoder_attention_mask is None else decoder_attention_mask
            decoder_attention_mask[:, 0] = 1
        image_tokens, _ = self.xattn.encode_image(pixel_values)
        memory, memory_mask = self._caption_memory(image_tokens, input_ids, attention_mask)
        decoded = self.captioner(memory, memory_mask, decoder_input_ids, decoder_attention_mask, labels)
        output = XAttnCaptionOutput(loss=decoded.loss, logits=decoded.logits, encoder_hidden_states=memory,
                                    encoder_attention_mask=memory_mask)
        return output if return_dict else output.to_tuple()


class XAttnForMultiTask(_RetrievalMixin, _CaptionGenerationMixin, XAttnPreTrainedModel):
    """All heads on one fused backbone, trained with Formula 4: L = λCE·LCE + λCL·LCL + λSEQ·LSEQ.

    A batch may carry labels for any subset of tasks: `labels` (classification/VQA, with `input_ids` as the
    statement or question) and/or `caption_input_ids` (the caption: the retrieval text and the decoder target).
    Weight names match the single-task heads, so a multi-task checkpoint loads into any of them.
    """

    def __init__(self, config: XAttnConfig):
        super().__init__(config)
        self.xattn = XAttnModel(config)
        self.classifier = XAttnClassificationHead(config)
        self.retrieval = XAttnRetrievalHead(config) if config.modalities == "both" else None
        self.captioner = XAttnCaptionHead(config) if config.use_image else None
        self._statement_heads = tuple(STATEMENT_HEADS)
        for name in self._statement_heads:
            self.add_module(name, STATEMENT_HEADS[name](config))
        self._tied_weights_keys = dict(_CAPTIONER_TIED_WEIGHTS) if self.captioner is not None else {}
        self.post_init()

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None, caption_input_ids=None,
                caption_attention_mask=None, image_ids=None, return_dict=None, **kwargs) -> XAttnMultiTaskOutput | tuple:
        r"""
        pixel_values: images `(B, 3, H, W)`, encoded once for every task.
        input_ids / attention_mask: statement, tweet or question for classification/VQA.
        labels (*optional*): class ids `(B,)` (-100 = no label for that row) or soft scores `(B, num_labels)` (a row
            of -100 = none). Labels that are all -100 (a caption-only batch; `XAttnCollator` always sends `labels`,
            which is how `Trainer` knows to report an evaluation loss) add no classification loss.
        caption_input_ids / caption_attention_mask (*optional*): a reference caption per image; gives the
            contrastive + matching loss (LCL) and the captioning loss (LSEQ). A row whose `caption_attention_mask`
            is all 0 has no caption and takes no part in either. `logits_per_image`, `image_embeds` and
            `text_embeds` cover every row; a row without a caption has a text embedding of nothing (select the
            rows with `caption_attention_mask.any(-1)`).
        image_ids (*optional*): rows with the same image id, or identical captions, are never retrieval negatives
            of each other.

        A task's loss is a mean over its own rows, computed with masks: a batch with no row for it gives 0, and no
        branch depends on the data, so the training step compiles as one graph (`fullgraph=True`).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        image_tokens = spatial = None
        if config.use_image:
            image_tokens, spatial = self.xattn.encode_image(pixel_values)
        losses, registered_outputs = {}, {}
        logits = similarity = caption_logits = image_embeds = text_embeds = None

        if (labels is not None and input_ids is None and config.use_text and not torch.compiler.is_compiling()
                and bool((labels != -100).any())):  # an input check of eager calls; a compiled step has no branch
            raise ValueError("labels were given without input_ids: the classifier reads the image with its statement "
                             "or question")
        if input_ids is not None or not config.use_text:
            mask = attention_mask if attention_mask is not None or input_ids is None else torch.ones_like(input_ids)
            text_tokens = self.xattn.encode_text(input_ids, mask) if config.use_text else None
            pooled = self.xattn.fuse(text_tokens, mask, image_tokens).pooler_output
            logits = self.classifier(pooled)
            if labels is not None and config.lambda_ce != 0:  # weighted 0: off; rows of -100 are masked out
                losses["ce"] = self.classifier.loss(logits, labels, config.problem_type)
            for name in self._statement_heads:  # `register_head`'s: logits_<name>, loss_<name>
                weighted = labels is not None and getattr(config, f"lambda_{name}", 1.0) != 0
                registered_outputs[f"logits_{name}"], loss = getattr(self, name)(pooled, labels if weighted else None)
                if loss is not None:
                    losses[name] = registered_outputs[f"loss_{name}"] = loss

        if caption_input_ids is not None:
            caption_mask = torch.ones_like(caption_input_ids) if caption_attention_mask is None else caption_attention_mask
            # Rows whose caption mask is all zero have no caption: they stay in the batch (its shapes never depend on
            # the data) and are masked out of retrieval and captioning. Their encoders read the first token, so that
            # no attention row is empty (an all-masked softmax is NaN, and NaN times a zero weight is still NaN).
            has_caption = caption_mask.bool().any(-1)  # (B,)
            first = torch.arange(caption_mask.shape[1], device=caption_mask.device) == 0
            readable = torch.where(has_caption[:, None], caption_mask, first[None, :].to(caption_mask.dtype))
            if self.retrieval is not None and (config.lambda_cl != 0 or config.lambda_itm != 0):  # weighted 0: off
                caption_tokens = self.xattn.encode_text(caption_input_ids, readable)
                retrieval = self._retrieval_losses(image_tokens, caption_tokens, readable, image_ids,
                                                   caption_input_ids, rows=has_caption)
                losses["cl"], losses["itm"] = retrieval.loss_contrastive, retrieval.loss_itm
                similarity, image_embeds, text_embeds = (retrieval.logits_per_image, retrieval.image_embeds,
                                                         retrieval.text_embeds)
            if self.captioner is not None and config.lambda_seq != 0:
                # The caption is only the decoder's target; the fused encoder sees the image and an empty prompt.
                memory, memory_mask = self._caption_memory(image_tokens)
                decoded = self.captioner(memory, memory_mask, caption_input_ids, readable,
                                         caption_labels(caption_input_ids, caption_mask, config.pad_token_id))
                losses["seq"] = decoded.loss
                caption_logits = decoded.logits

        # Formula 4 (+ ITM): each loss weighted by the config's lambda of the same name
        loss = sum(getattr(config, f"lambda_{name}", 1.0) * value for name, value in losses.items()) if losses else None
        output = XAttnMultiTaskOutput(
            loss=loss, loss_ce=losses.get("ce"), loss_cl=losses.get("cl"), loss_itm=losses.get("itm"),
            loss_seq=losses.get("seq"),
            logits=logits, logits_per_image=similarity, caption_logits=caption_logits, image_embeds=image_embeds,
            text_embeds=text_embeds,
        )
        for key, value in registered_outputs.items():  # (only where the batch had statements)
            output[key] = value
        return output if return_dict else output.to_tuple()


def register_head(name: str, head_class: type) -> None:
    """Add a task head to `XAttnForMultiTask` (to the models built after this call). `head_class(config)` is an
    `nn.Module` whose `forward(pooled, labels)` takes the pooled fused statement `(batch, hidden_size)` (what the
    classifier reads) and the batch's `labels` (class ids `(batch,)`, or VQA's soft scores `(batch, answers)`; -100
    marks a row without one), or None when they are absent or its weight is 0, and returns `(logits, loss)`: the loss
    a mean over the labelled rows, 0 when the batch has none (never NaN), None without labels. The model output
    carries them as `logits_<name>` and `loss_<name>` (for batches with statements); Formula 4 weighs the loss by the
    config's `lambda_<name>` (1.0 where the config has none). Its task is a `Task` of the training library's registry
    with `head=name`, `losses=("loss_<name>",)`, `weights=(LossWeight("lambda_<name>"),)`.

    The saved folder's code files are this file and its siblings: a head registered from other code is in the weights
    but not in the code a Hub user runs, so a head to publish is written and registered here."""
    if name in HEAD_LOSS_WEIGHTS or name in STATEMENT_HEADS or not name.isidentifier():
        raise ValueError(f"register_head: {name!r} is taken or not a Python name")
    STATEMENT_HEADS[name] = head_class
    HEAD_LOSS_WEIGHTS[name] = (f"lambda_{name}",)
    for keys in (XAttnPreTrainedModel._keys_to_ignore_on_load_missing,
                 XAttnPreTrainedModel._keys_to_ignore_on_load_unexpected):
        keys.append(rf"^{name}\.")


# The Auto classes each model answers to (transformers has no Auto class for image-text retrieval; the multi-task model
# takes AutoModelForPreTraining, as LXMERT's multi-objective pre-training model does). Written into every saved
# config's `auto_map`, so the folder loads with `trust_remote_code=True` without this package installed.
AUTO_CLASSES = {
    "AutoModel": XAttnModel,
    "AutoModelForSequenceClassification": XAttnForSequenceClassification,
    "AutoModelForImageTextToText": XAttnForConditionalGeneration,
    "AutoModelForPreTraining": XAttnForMultiTask,
}
AUTO_MAP = {"AutoConfig": "configuration_xattn.XAttnConfig"}
AUTO_MAP.update({auto: f"modeling_xattn.{model.__name__}" for auto, model in AUTO_CLASSES.items()})
for _auto, _model in AUTO_CLASSES.items():
    _model.register_for_auto_class(_auto)
XAttnForImageTextRetrieval.register_for_auto_class("AutoModel")  # copies the code files when it is saved on its own

__all__ = [
    "AUTO_CLASSES",
    "XAttnCBAM",
    "XAttnVisionEncoder",
    "XAttnAttention",
    "XAttnFusionLayer",
    "XAttnAttentionPool",
    "XAttnPreTrainedModel",
    "XAttnModel",
    "XAttnForSequenceClassification",
    "XAttnForImageTextRetrieval",
    "XAttnForConditionalGeneration",
    "XAttnForMultiTask",
    "XAttnModelOutput",
    "XAttnSequenceClassifierOutput",
    "XAttnRetrievalOutput",
    "XAttnCaptionOutput",
    "XAttnMultiTaskOutput",
    "register_head",
]
