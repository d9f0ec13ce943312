"""Configuration of the cross-attention visual-language fusion model (`XAttnConfig`).

The model follows "Cross-Attention Transformer-Based Visual-Language Fusion for Multimodal Image Analysis" (2025):
DenseNet121 + CBAM image features, ALBERT text features, bidirectional multi-head cross-attention, a linear fusion
layer, and heads for classification, image-text matching and captioning.
"""

from __future__ import annotations

import copy

from transformers import AlbertConfig, BertConfig, PretrainedConfig

# Size presets. "tiny" is for tests and laptops (well under 1M parameters, 64 px images, an 8x8 region grid);
# "small" is the size the no-argument training job uses on CPUs; "base" is the paper's: DenseNet121 at 224 px
# (a 7x7 grid of 1024-channel regions) and albert-base-v2's shape.
PRESETS: dict[str, dict] = {
    "tiny": dict(
        image_size=64,
        growth_rate=8,
        block_config=(2, 2),  # two dense blocks -> stride 8 -> an 8x8 grid at 64 px
        num_init_features=16,
        bn_size=2,
        cbam_reduction=4,
        text_config=dict(
            vocab_size=1000,
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
        hidden_size=32,
        num_fusion_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        projection_dim=32,
        initializer_range=0.1,  # ~1/sqrt(width): 0.02 is 1/sqrt(width) for the base preset's 768-wide layers
        decoder_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
        ),
    ),
    "small": dict(
        image_size=64,
        growth_rate=16,
        block_config=(3, 3),
        num_init_features=32,
        bn_size=2,
        cbam_reduction=8,
        text_config=dict(
            vocab_size=1000,
            embedding_size=32,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
        ),
        hidden_size=64,
        num_fusion_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        projection_dim=64,
        initializer_range=0.1,  # ~1/sqrt(width), as tiny
        decoder_config=dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=64,
        ),
    ),
    "base": dict(),  # the defaults below are the paper's sizes
}

# The paper's 3-way sentiment classes, in label-id order: the default classifier and the embedded dataset's labels.
SENTIMENT_LABELS = ("positive", "neutral", "negative")
FUSION_TYPES = ("cross_attention", "concat")
MODALITIES = ("both", "image", "text")
CONTRASTIVE_LOSSES = ("margin", "margin_squared", "infonce", "sigmoid")
POOLINGS = ("mean", "attention")
DISTANCES = ("euclidean", "cosine")

# albert-base-v2's shape; the vocabulary is albert-base-v2's 30000 SentencePiece pieces.
ALBERT_BASE = dict(
    vocab_size=30000,
    embedding_size=128,
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=3,
)

# The caption decoder: a causal BERT with cross-attention (BLIP's text decoder design), 4 layers at the fusion width.
DECODER_BASE = dict(
    hidden_size=768,
    num_hidden_layers=4,
    num_attention_heads=12,
    intermediate_size=3072,
    max_position_embeddings=128,
)


def densenet_grid_size(image_size: int, num_blocks: int) -> int:
    """Side of the feature grid torchvision's DenseNet produces for a square image.

    conv0 (7x7, stride 2, pad 3) and pool0 (3x3, stride 2, pad 1) halve the side twice; each transition between
    dense blocks halves it again with a 2x2 average pool.
    """
    side = (image_size - 1) // 2 + 1  # conv0
    side = (side - 1) // 2 + 1  # pool0
    for _ in range(num_blocks - 1):
        side //= 2  # transition avg-pool
    return side


class XAttnConfig(PretrainedConfig):
    r"""Configuration of [`XAttnModel`] and its heads.

    Vision tower (DenseNet + CBAM):
        image_size (`int`, defaults to 224): side of the square input image in pixels.
        num_channels (`int`, defaults to 3): input image channels.
        growth_rate (`int`, defaults to 32): DenseNet growth rate (DenseNet121: 32).
        block_config (`tuple[int]`, defaults to `(6, 12, 24, 16)`): layers per dense block (DenseNet121). Each
            block after the first halves the grid, so `(2, 2)` at 64 px gives an 8x8 grid of regions.
        num_init_features (`int`, defaults to 64): channels of DenseNet's stem convolution (DenseNet121: 64).
        bn_size (`int`, defaults to 4): DenseNet bottleneck width multiplier.
        vision_dropout (`float`, defaults to 0.0): DenseNet's dropout after each dense layer.
        memory_efficient (`bool`, defaults to False): DenseNet's checkpointed dense layers (less memory, slower).
        use_cbam (`bool`, defaults to True): refine the DenseNet feature map with CBAM (channel, then spatial
            attention; Woo et al. 2018). False is the paper's "without CBAM" ablation.
        cbam_reduction (`int`, defaults to 16): reduction ratio of CBAM's channel-attention MLP.
        cbam_kernel_size (`int`, defaults to 7): kernel of CBAM's spatial-attention convolution (odd).

    Text tower:
        text_config (`AlbertConfig` or `dict`, defaults to albert-base-v2's shape): the ALBERT encoder.

    Fusion:
        hidden_size (`int`, defaults to 768): width of the fusion layers; both towers are projected to it.
        num_fusion_layers (`int`, defaults to 4): number of [`XAttnFusionLayer`]s.
        num_attention_heads (`int`, defaults to 12): heads of every fusion attention; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 3072): width of the fusion feed-forward layers.
        hidden_dropout_prob (`float`, defaults to 0.1): dropout on every fusion sub-layer's output.
        attention_dropout_prob (`float`, defaults to 0.0): dropout on the fusion attention probabilities (off by
            default: on CPUs it forces the slower non-fused attention path; docs/performance.md has the cost).
        layer_norm_eps (`float`, defaults to 1e-12): epsilon of the fusion LayerNorms.
        fusion_type (`str`, defaults to `"cross_attention"`): `"cross_attention"` (text attends to image regions and
            image regions attend to text in every fusion layer) or `"concat"` (the paper's "without cross-attention"
            ablation: the same layers minus the cross-attention sub-layers, pooled streams concatenated).
        modalities (`str`, defaults to `"both"`): `"both"`, `"image"` (visual features only) or `"text"` (text
            features only). With one modality there is no other stream to attend to, so no cross-attention.
        fusion_self_attention (`bool`, defaults to True): per-stream self-attention after the cross-attention in
            every fusion layer (as LXMERT does); without it the words' look-ups into the image cannot be combined.
        fusion_gate (`bool`, defaults to False): gate every cross-attention sub-layer with a learned tanh(g), g
            initialised at 0, as a pre-norm residual (Flamingo's gated cross-attention): h + tanh(g)·attn(LN(h), other).
            At g = 0 the layer is exactly the concatenation model's layer, so training starts from "without
            cross-attention" and the fusion is added only as far as it helps. False: the paper's post-norm
            sub-layer, LN(h + attn(h, other)). `scripts/train.py` sets True unless `--recipe paper`.
        fusion_gate_init (`float`, defaults to 0.0): the initial g of every gate. At 0 the cross-attention's own
            weights get no gradient until a gate moves (their output is multiplied by tanh(0) = 0); a small opening
            (e.g. 0.1) lets them learn from the first step, at the cost of starting near, not at, concatenation.
        initializer_range (`float`, defaults to 0.02): std of the normal init of linear and embedding weights.

    Heads:
        num_labels / id2label (defaults to 3 labels: positive, neutral, negative): classification head outputs.
        problem_type (`str`, optional): `"single_label_classification"` (cross-entropy, Formula 1) or
            `"multi_label_classification"` (VQA soft scores, binary cross-entropy); inferred from labels if unset.
        classifier_dropout (`float`, defaults to 0.1): dropout in the classification MLP.
        projection_dim (`int`, defaults to 256): width of the retrieval embeddings.
        retrieval_pooling (`str`, defaults to `"mean"`): how a stream's tokens become its retrieval embedding before
            the projection: `"mean"` (masked mean) or `"attention"` (a learned query attends over the tokens, as
            CLIP's and SigLIP's attention-pooling heads; the mean of region tokens is dominated by what every token
            shares, the 2-D position embeddings and LayerNorm's bias). `scripts/train.py` sets `"attention"` unless
            `--recipe paper`.
        contrastive_loss (`str`, defaults to `"margin"`): `"margin"`, the paper's Formula 2 as written,
            L = 1/N Σ [y·D + (1−y)·max(0, m − D)] over the N = B² in-batch (image, text) pairs; `"margin_squared"`,
            Hadsell et al.'s form with both terms squared; `"infonce"`, symmetric cross-entropy over in-batch
            similarities / temperature (CLIP); or `"sigmoid"`, SigLIP's pairwise loss over all B² pairs,
            -1/B Σ log σ(z_ij·(t·cos_ij + b)) with z = 1 for a match and -1 otherwise: the y and 1−y terms of
            Formula 2 with a learned scale t and bias b (initialised at 10 and -10) that absorb the 1 : B−1 imbalance.
        contrastive_margin (`float`, defaults to 1.0): margin m of Formula 2 (embeddings are L2-normalised, so the
            Euclidean distance lies in [0, 2]).
        contrastive_distance (`str`, defaults to `"euclidean"`): distance of Formula 2, `"euclidean"` or `"cosine"`
            (1 - cosine similarity).
        contrastive_temperature (`float`, defaults to 0.07): temperature of the InfoNCE option (its initial value
            when learned), and of drawing the matching head's negatives.
        learnable_temperature (`bool`, defaults to False): learn InfoNCE's temperature as CLIP does: a logit scale
            initialised at ln(1/contrastive_temperature), clamped at ln 100 (the loss's `sigmoid` option always
            learns its scale and bias). `scripts/train.py` sets True unless `--recipe paper`.
        lambda_ce (`float`, defaults to 1.0), lambda_cl (`float`, defaults to 1.0), lambda_seq (`float`, defaults
            to 1.0): the weights of Formula 4, L = λCE·LCE + λCL·LCL + λSEQ·LSEQ.
        lambda_itm (`float`, defaults to 1.0): weight of the image-text matching loss, a term this package adds to
            Formula 4 (L + λITM·LITM): the matching head re-ranks retrieval shortlists; 0 turns it off.
        itm_negatives (`str`, defaults to `"hard"`): the matching loss's in-batch negatives: `"hard"` (drawn in
            proportion to the contrastive similarity, ALBEF's and BLIP's) or `"random"` (uniform among the real
            negatives).
        decoder_config (`BertConfig` or `dict`): the causal caption decoder (vocabulary = the text vocabulary).
        caption_label_smoothing (`float`, defaults to 0.0): label smoothing of Formula 3's cross-entropy (BLIP's
            decoder uses 0.1); 0 is Formula 3 as written.
        max_caption_length (`int`, defaults to 40): longest caption (tokens) the data pipeline prepares.
        pad_token_id (`int`, defaults to 0), bos_token_id (`int`, defaults to 2, ALBERT's `[CLS]`), eos_token_id
            (`int`, defaults to 3, ALBERT's `[SEP]`): special tokens used by generation.
    """

    model_type = "xattn"
    sub_configs_defaults = {"text_config": AlbertConfig, "decoder_config": BertConfig}

    def __init__(
        self,
        image_size: int = 224,
        num_channels: int = 3,
        growth_rate: int = 32,
        block_config=(6, 12, 24, 16),
        num_init_features: int = 64,
        bn_size: int = 4,
        vision_dropout: float = 0.0,
        memory_efficient: bool = False,
        use_cbam: bool = True,
        cbam_reduction: int = 16,
        cbam_kernel_size: int = 7,
        text_config=None,
        hidden_size: int = 768,
        num_fusion_layers: int = 4,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_dropout_prob: float = 0.1,
        attention_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-12,
        fusion_type: str = "cross_attention",
        modalities: str = "both",
        fusion_self_attention: bool = True,
        fusion_gate: bool = False,
        fusion_gate_init: float = 0.0,
        initializer_range: float = 0.02,
        classifier_dropout: float = 0.1,
        projection_dim: int = 256,
        retrieval_pooling: str = "mean",
        contrastive_loss: str = "margin",
        contrastive_margin: float = 1.0,
        contrastive_distance: str = "euclidean",
        contrastive_temperature: float = 0.07,
        learnable_temperature: bool = False,
        lambda_ce: float = 1.0,
        lambda_cl: float = 1.0,
        lambda_seq: float = 1.0,
        lambda_itm: float = 1.0,
        itm_negatives: str = "hard",
        decoder_config=None,
        caption_label_smoothing: float = 0.0,
        max_caption_length: int = 40,
        pad_token_id: int = 0,
        bos_token_id: int = 2,
        eos_token_id: int = 3,
        **kwargs,
    ):
        self.image_size = image_size
        self.num_channels = num_channels
        self.growth_rate = growth_rate
        self.block_config = tuple(block_config)
        self.num_init_features = num_init_features
        self.bn_size = bn_size
        self.vision_dropout = vision_dropout
        self.memory_efficient = memory_efficient
        self.use_cbam = use_cbam
        self.cbam_reduction = cbam_reduction
        self.cbam_kernel_size = cbam_kernel_size

        text_kwargs = {**ALBERT_BASE, **_as_dict(text_config)}
        self.text_config = AlbertConfig(**text_kwargs)

        self.hidden_size = hidden_size
        self.num_fusion_layers = num_fusion_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_dropout_prob = attention_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.fusion_type = fusion_type
        self.modalities = modalities
        self.fusion_self_attention = fusion_self_attention
        self.fusion_gate = fusion_gate
        self.fusion_gate_init = fusion_gate_init
        self.initializer_range = initializer_range

        self.classifier_dropout = classifier_dropout
        self.projection_dim = projection_dim
        self.retrieval_pooling = retrieval_pooling
        self.contrastive_loss = contrastive_loss
        self.contrastive_margin = contrastive_margin
        self.contrastive_distance = contrastive_distance
        self.contrastive_temperature = contrastive_temperature
        self.learnable_temperature = learnable_temperature
        self.lambda_ce = lambda_ce
        self.lambda_cl = lambda_cl
        self.lambda_seq = lambda_seq
        self.lambda_itm = lambda_itm
        self.itm_negatives = itm_negatives
        self.caption_label_smoothing = caption_label_smoothing
        self.max_caption_length = max_caption_length
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

        # The decoder shares the text vocabulary and special tokens; it is causal and cross-attends to the fusion.
        decoder_kwargs = {**DECODER_BASE, **_as_dict(decoder_config)}
        decoder_kwargs.update(
            vocab_size=self.text_config.vocab_size,
            is_decoder=True,
            add_cross_attention=True,
            loss_type="ForCausalLM",
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
        )
        self.decoder_config = BertConfig(**decoder_kwargs)

        if kwargs.get("id2label") is None and kwargs.get("num_labels") is None:
            kwargs["id2label"] = dict(enumerate(SENTIMENT_LABELS))
            kwargs["label2id"] = {label: index for index, label in enumerate(SENTIMENT_LABELS)}
        elif kwargs.get("id2label") is not None and kwargs.get("label2id") is None:  # keep the two maps in step
            kwargs["label2id"] = {str(label): int(index) for index, label in kwargs["id2label"].items()}
        kwargs.setdefault("tie_word_embeddings", True)  # the caption decoder's output layer is its input embedding
        super().__init__(**kwargs)
        self.validate_fields()

    # ------------------------------------------------------------------ derived values
    @property
    def grid_size(self) -> int:
        """Side of the square grid of image regions that the vision tower produces."""
        return densenet_grid_size(self.image_size, len(self.block_config))

    @property
    def num_image_tokens(self) -> int:
        return self.grid_size**2

    @property
    def use_image(self) -> bool:
        return self.modalities in ("both", "image")

    @property
    def use_text(self) -> bool:
        return self.modalities in ("both", "text")

    @property
    def use_cross_attention(self) -> bool:
        return self.fusion_type == "cross_attention" and self.modalities == "both"

    # ------------------------------------------------------------------ validation
    def validate_fields(self):
        """Raise `ValueError` naming the first invalid field."""

        def fail(field, message):
            raise ValueError(f"XAttnConfig.{field}: {message}")

        if self.fusion_type not in FUSION_TYPES:
            fail("fusion_type", f"must be one of {FUSION_TYPES}, got {self.fusion_type!r}")
        if self.modalities not in MODALITIES:
            fail("modalities", f"must be one of {MODALITIES}, got {self.modalities!r}")
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            fail("contrastive_loss", f"must be one of {CONTRASTIVE_LOSSES}, got {self.contrastive_loss!r}")
        if self.retrieval_pooling not in POOLINGS:
            fail("retrieval_pooling", f"must be one of {POOLINGS}, got {self.retrieval_pooling!r}")
        if self.contrastive_distance not in DISTANCES:
            fail("contrastive_distance", f"must be one of {DISTANCES}, got {self.contrastive_distance!r}")
        for field in ("hidden_size", "num_attention_heads", "intermediate_size", "projection_dim", "growth_rate",
                      "num_init_features", "bn_size", "cbam_reduction", "image_size", "num_channels",
                      "max_caption_length"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                fail(field, f"must be a positive integer, got {value!r}")
        if not isinstance(self.num_fusion_layers, int) or self.num_fusion_layers < 0:
            fail("num_fusion_layers", f"must be a non-negative integer, got {self.num_fusion_layers!r}")
        if self.hidden_size % self.num_attention_heads:
            fail("hidden_size", f"{self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}")
        if not self.block_config or any((not isinstance(b, int)) or b < 1 for b in self.block_config):
            fail("block_config", f"must be a non-empty sequence of positive integers, got {self.block_config!r}")
        if self.cbam_kernel_size < 1 or self.cbam_kernel_size % 2 == 0:
            fail("cbam_kernel_size", f"must be a positive odd integer, got {self.cbam_kernel_size!r}")
        if self.grid_size < 1:
            fail("image_size", f"{self.image_size} px is too small for {len(self.block_config)} dense blocks")
        for field in ("hidden_dropout_prob", "attention_dropout_prob", "vision_dropout", "classifier_dropout",
                      "caption_label_smoothing"):
            value = getattr(self, field)
            if not 0.0 <= value < 1.0:
                fail(field, f"must lie in [0, 1), got {value!r}")
        for field in ("lambda_ce", "lambda_cl", "lambda_seq", "lambda_itm", "contrastive_margin"):
            if getattr(self, field) < 0:
                fail(field, f"must be >= 0, got {getattr(self, field)!r}")
        if self.contrastive_temperature <= 0:
            fail("contrastive_temperature", f"must be > 0, got {self.contrastive_temperature!r}")
        if self.itm_negatives not in ("hard", "random"):
            fail("itm_negatives", f"must be 'hard' or 'random', got {self.itm_negatives!r}")
        vocab = self.text_config.vocab_size
        for field in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, field)
            if not 0 <= value < vocab:
                fail(field, f"{value} is outside the text vocabulary (text_config.vocab_size={vocab})")
        if self.decoder_config.hidden_size % self.decoder_config.num_attention_heads:
            fail("decoder_config", "hidden_size is not divisible by num_attention_heads")
        if self.max_caption_length > self.decoder_config.max_position_embeddings:
            fail("max_caption_length", f"{self.max_caption_length} exceeds decoder_config.max_position_embeddings="
                 f"{self.decoder_config.max_position_embeddings}")

    # ------------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "XAttnConfig":
        """Build a config from a named size preset (`"tiny"`, `"small"`, `"base"`), with keyword overrides.

        `text_config` / `decoder_config` overrides given as dicts are merged into the preset's, so
        `from_preset("tiny", text_config={"vocab_size": 500})` keeps the tiny ALBERT's other sizes.
        """
        if name not in PRESETS:
            raise ValueError(f"XAttnConfig.from_preset: unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = copy.deepcopy(PRESETS[name])
        for key in ("text_config", "decoder_config"):
            if key in overrides and isinstance(overrides[key], dict):
                overrides[key] = {**kwargs.get(key, {}), **overrides[key]}
        kwargs.update(overrides)
        return cls(**kwargs)


def _as_dict(config) -> dict:
    if config is None:
        return {}
    if isinstance(config, PretrainedConfig):
        return config.to_dict()
    return dict(config)


XAttnConfig.register_for_auto_class()

__all__ = ["XAttnConfig", "PRESETS", "SENTIMENT_LABELS", "densenet_grid_size"]
