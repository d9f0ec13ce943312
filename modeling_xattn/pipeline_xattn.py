"""transformers pipelines for the XAttn models: caption a photo, score an image against a statement, rank captions.

Every saved model folder carries this file and lists the pipelines in its config's `custom_pipelines`, so with
`trust_remote_code=True` they load from a folder or the Hub without this package installed:

    pipeline("image-to-text", model=folder_or_hub_id, trust_remote_code=True)(image)
        -> [{"generated_text": "a dog runs on the grass"}]
    pipeline("image-text-classification", model=..., trust_remote_code=True)(image, text="a happy day at the beach")
        -> [{"label": "positive", "score": 0.91}, ...]
    pipeline("zero-shot-image-classification", model=..., trust_remote_code=True)(image, candidate_labels=[...])
        -> [{"label": "a dog runs on the grass", "score": 0.97}, ...]   (each caption's matching probability)

The names are the familiar task names, so a model folder answers the call a user already knows. Within a process,
the same classes are registered with `PIPELINE_REGISTRY` under `xattn-` names, for a model object:
`pipeline("xattn-image-to-text", model=model, processor=processor)`. Registering the familiar names globally would
take them over for every other model in the process, so they live only in the folder's config.

Images may be PIL images, paths or URLs (transformers' `load_image`); a list gives a list of results; `batch_size=`
batches them. Captioning calls the model's own `generate`, so the caption is exactly `model.generate`'s, from the
model's `generation_config` and any generation argument given to the pipeline.
"""

from __future__ import annotations

from transformers import (AutoModelForImageTextToText, AutoModelForPreTraining, AutoModelForSequenceClassification,
                          Pipeline)
from transformers.image_utils import load_image
from transformers.pipelines import PIPELINE_REGISTRY

_GENERATION_ARGS = ("max_new_tokens", "num_beams", "do_sample", "temperature", "top_k", "top_p", "min_new_tokens",
                    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "use_cache", "generation_config")


class _XAttnPipeline(Pipeline):
    """Loads the model's processor (images and text in one) and nothing else."""

    _load_processor = True
    _load_image_processor = False
    _load_tokenizer = False
    _load_feature_extractor = False
    _pipeline_calls_generate = False  # generation arguments go to the model's own generate (see XAttnCaptioningPipeline)

    @staticmethod
    def _given(**values) -> dict:
        """The call's options that were given (not None), for `_sanitize_parameters`."""
        return {key: value for key, value in values.items() if value is not None}

    def _image_inputs(self, image, timeout=None):
        if isinstance(image, dict):
            image = image["image"]
        return self.processor(images=[load_image(image, timeout=timeout)])


class XAttnCaptioningPipeline(_XAttnPipeline):
    """Image -> caption. Optional `prompt=` (a question or a prefix context for the fused encoder, as in training)
    and generation arguments (`max_new_tokens`, `num_beams`, `do_sample`, ... or `generate_kwargs={...}`)."""

    def _sanitize_parameters(self, prompt=None, timeout=None, generate_kwargs=None, **kwargs):
        preprocess, forward = self._given(prompt=prompt, timeout=timeout), dict(generate_kwargs or {})
        for key in _GENERATION_ARGS:
            if key in kwargs:
                forward[key] = kwargs.pop(key)
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected arguments: {', '.join(sorted(kwargs))}")
        return preprocess, forward, {}

    def preprocess(self, image, prompt=None, timeout=None):
        inputs = self._image_inputs(image, timeout)
        if prompt is not None:
            inputs.update(self.processor(text=[prompt]))
        return inputs

    def _forward(self, model_inputs, **generate_kwargs):
        sequences = self.model.generate(model_inputs["pixel_values"], input_ids=model_inputs.get("input_ids"),
                                        attention_mask=model_inputs.get("attention_mask"), **generate_kwargs)
        return {"sequences": sequences}

    def postprocess(self, model_outputs):
        texts = self.processor.batch_decode(model_outputs["sequences"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


def label_probabilities(logits, config):
    """Probabilities of one row of classifier `logits`: softmax over the classes, or a sigmoid per answer for a
    multi-label (VQA soft-score) model."""
    logits = logits.float()
    return logits.sigmoid() if config.problem_type == "multi_label_classification" else logits.softmax(-1)


class XAttnImageTextClassificationPipeline(_XAttnPipeline):
    """(image, statement or question) -> labels with probabilities, highest first: softmax over the classes, or a
    sigmoid per answer for a multi-label (VQA soft-score) model. `top_k=None` returns every label."""

    def _sanitize_parameters(self, text=None, top_k=None, timeout=None, **kwargs):
        return self._given(text=text, timeout=timeout), {}, {"top_k": top_k}

    def __call__(self, image, text=None, **kwargs):
        """`image` with `text=`, or a dict / list of dicts `{"image": ..., "text": ...}`. A list of images takes one
        text for all of them or a list of one text per image."""
        if text is not None:
            if isinstance(image, (list, tuple)):
                texts = [text] * len(image) if isinstance(text, str) else list(text)
                if len(texts) != len(image):
                    raise ValueError(f"{len(image)} images and {len(texts)} texts: give one text, or one per image")
                image = [{"image": i, "text": t} for i, t in zip(image, texts)]
            else:
                image = {"image": image, "text": text}
        return super().__call__(image, **kwargs)

    def preprocess(self, inputs, text=None, timeout=None):
        text = inputs.get("text", text) if isinstance(inputs, dict) else text
        if not text:
            raise ValueError("image-text-classification needs the text to classify with the image: text='...'")
        encoded = self._image_inputs(inputs, timeout)
        encoded.update(self.processor(text=[text]))
        return encoded

    def _forward(self, model_inputs):
        return {"logits": self.model(**model_inputs).logits}

    def postprocess(self, model_outputs, top_k=None):
        probs = label_probabilities(model_outputs["logits"][0], self.model.config)
        order = probs.argsort(descending=True)[: top_k or len(probs)]
        labels = self.model.config.id2label
        return [{"label": labels[int(i)], "score": float(probs[i])} for i in order]


class XAttnCaptionRankingPipeline(_XAttnPipeline):
    """(image, candidate captions) -> the captions ranked by the cross-attention matching probability, highest first
    (the probability that the caption describes the image; the scores do not sum to 1). `hypothesis_template` wraps
    each candidate, `"{}"` by default."""

    def _sanitize_parameters(self, candidate_labels=None, hypothesis_template=None, timeout=None, **kwargs):
        return self._given(candidate_labels=candidate_labels, hypothesis_template=hypothesis_template,
                           timeout=timeout), {}, {}

    def preprocess(self, image, candidate_labels=None, hypothesis_template="{}", timeout=None):
        if not candidate_labels:
            raise ValueError("zero-shot-image-classification needs candidate_labels=[caption, ...]")
        if isinstance(candidate_labels, str):
            candidate_labels = [candidate_labels]
        inputs = self._image_inputs(image, timeout)
        inputs.update(self.processor(text=[hypothesis_template.format(label) for label in candidate_labels]))
        inputs["candidate_labels"] = list(candidate_labels)
        return inputs

    def _forward(self, model_inputs):
        candidates = model_inputs.pop("candidate_labels")
        if isinstance(candidates[0], (list, tuple)):  # batched: each entry holds one image's list
            candidates = candidates[0]
        texts = model_inputs["input_ids"]
        image_tokens, _ = self.model.xattn.encode_image(model_inputs["pixel_values"])  # the image is encoded once
        scores = self.model.itm_score(texts, model_inputs["attention_mask"],
                                      image_hidden_states=image_tokens.expand(len(texts), -1, -1))
        return {"scores": scores[None], "candidate_labels": candidates}

    def postprocess(self, model_outputs):
        scores = model_outputs["scores"][0].float()
        order = scores.argsort(descending=True)
        labels = model_outputs["candidate_labels"]
        return [{"label": labels[int(i)], "score": float(scores[i])} for i in order]


# Task name -> pipeline class and the Auto class that loads its model. Written into every saved config.
PIPELINES = {
    "image-to-text": (XAttnCaptioningPipeline, AutoModelForImageTextToText),
    "image-text-classification": (XAttnImageTextClassificationPipeline, AutoModelForSequenceClassification),
    "zero-shot-image-classification": (XAttnCaptionRankingPipeline, AutoModelForPreTraining),
}
CUSTOM_PIPELINES = {
    task: {"impl": f"pipeline_xattn.{pipeline.__name__}", "pt": [auto.__name__], "type": "multimodal"}
    for task, (pipeline, auto) in PIPELINES.items()
}
for _task, (_pipeline, _auto) in PIPELINES.items():
    if f"xattn-{_task}" not in PIPELINE_REGISTRY.supported_tasks:  # this file may load twice: package and remote code
        PIPELINE_REGISTRY.register_pipeline(f"xattn-{_task}", pipeline_class=_pipeline, pt_model=_auto,
                                            type="multimodal")

__all__ = ["CUSTOM_PIPELINES", "PIPELINES", "XAttnCaptioningPipeline", "XAttnCaptionRankingPipeline",
           "XAttnImageTextClassificationPipeline"]
