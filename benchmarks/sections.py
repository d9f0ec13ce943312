"""The section modules, by name: in the order they run when `--sections` does not name them (its default,
`options.SECTIONS`; named, they run in the order named) and in the order the report's table shows them."""

from __future__ import annotations

from benchmarks import (
    finetune,
    fusion,
    generation,
    inference,
    photo_cache,
    precision,
    rerank_batch,
    retrieval,
    step_profile,
    training,
)

MODULES = {"fusion": fusion, "generation": generation, "retrieval": retrieval, "training": training,
           "inference": inference, "precision": precision, "finetune": finetune, "rerank_batch": rerank_batch,
           "step_profile": step_profile, "photo_cache": photo_cache}
# the order the figures are read in, not the order they run in
TABLE = {name: MODULES[name] for name in ("fusion", "generation", "retrieval", "training", "precision", "finetune",
                                          "step_profile", "photo_cache", "rerank_batch", "inference")}
