"""Model presets at equal parameter count (decisions D10, D11; the paper sizes of its section 9).

Every family uses the Transformer++ preset's width, depth, heads and vocabulary; the part that
differs is sized so the total parameter count matches Transformer++ of the same preset:

* ``hope``: two CMS levels of equal width, solved for;
* ``hope_attention``: attention + three CMS levels splitting the Transformer++ MLP width;
* ``titans`` / ``titans_mag``: the MLP width is solved for.

All counts are within 1.3% of Transformer++ (tiny: 5,507,328 parameters; HOPE +0.40%,
HOPE-Attention +0.04%, Titans -0.74%, Titans-MAG +0.49%; task, at its placeholder vocabulary of
32: 135,488, within 1%; a task's own vocabulary changes every family's embeddings alike).

CMS periods follow Fig. 5 (the levels above the fastest one are slow, updated by the outer loop
on a long period): level 0 updates every optimizer step, level 1 (and 2) every ``2**16`` tokens
for ``tiny``, ``2**14`` for ``task`` (a synthetic task's step reads a few thousand tokens, so the
slow level updates every few steps of its short training) and ``2**24`` for the paper sizes.
In-context CMS levels (``cms_inner_lrs > 0``) are an option, not a preset default: they learn from
the next-token loss while reading, at the cost of a backward pass per chunk.

``python -m nestlearn.models.presets`` prints the parameter counts (built on the meta device).
"""

from __future__ import annotations

from typing import Any

import torch

from nestlearn.models.hope import HopeConfig, HopeForCausalLM
from nestlearn.models.titans import TitansConfig, TitansForCausalLM
from nestlearn.models.transformer import (
    TRANSFORMER_PRESETS,
    TransformerConfig,
    TransformerForCausalLM,
)

__all__ = ["FAMILIES", "SIZES", "count_parameters", "preset_config", "preset_model_class"]

SIZES = tuple(TRANSFORMER_PRESETS)
FAMILIES = ("transformer", "hope", "hope_attention", "titans", "titans_mag")
_CLASSES = {"transformer": TransformerForCausalLM, "hope": HopeForCausalLM,
            "hope_attention": HopeForCausalLM, "titans": TitansForCausalLM,
            "titans_mag": TitansForCausalLM}


# Slow CMS period (tokens) and width granularity per preset; the paper sizes use 2**24 and 64.
_SLOW_PERIODS = {"task": 2**14, "tiny": 2**16}
_MULTIPLES = {"task": 4, "tiny": 32}


def preset_model_class(family: str):
    _check(family, FAMILIES, "family")
    return _CLASSES[family]


def count_parameters(config) -> int:
    """Parameters of the causal LM built from ``config`` (on the meta device: no memory)."""
    cls = {TransformerConfig: TransformerForCausalLM, HopeConfig: HopeForCausalLM,
           TitansConfig: TitansForCausalLM}[type(config)]
    with torch.device("meta"):
        model = cls(config)
    return sum(p.numel() for p in model.parameters())


def _round(x: float, multiple: int) -> int:
    return max(multiple, multiple * round(x / multiple))


def _solve(make, target: int, multiple: int) -> int:
    """The width w (a multiple of ``multiple``) for which ``count(make(w))`` is closest to
    ``target``; the count is affine in w, so two probes find it."""
    a, b = multiple, 2 * multiple
    ca, cb = count_parameters(make(a)), count_parameters(make(b))
    slope = (cb - ca) / (b - a)
    return _round(a + (target - ca) / slope, multiple)


def preset_config(family: str, size: str = "tiny", **overrides: Any):
    """The config of ``family`` at preset ``size`` (one of ``SIZES``), ``overrides`` applied."""
    _check(family, FAMILIES, "family")
    _check(size, SIZES, "preset")
    shape = dict(TRANSFORMER_PRESETS[size])
    base = TransformerConfig(**shape)
    if family == "transformer":
        return TransformerConfig(**{**shape, **overrides})
    target = count_parameters(base)
    slow = _SLOW_PERIODS.get(size, 2**24)
    multiple = _MULTIPLES.get(size, 64)
    if family == "hope_attention":
        levels = 3
        width = _round(base.intermediate_size / levels, multiple)
        fields = dict(variant="hope_attention", cms_hidden_sizes=[width] * levels,
                      cms_periods=[0] + [slow] * (levels - 1), cms_inner_lrs=[0.0] * levels)
        return HopeConfig(**{**shape, **fields, **overrides})
    if family == "hope":
        def make(w):
            return HopeConfig(**shape, cms_hidden_sizes=[w, w], cms_periods=[0, slow],
                              cms_inner_lrs=[0.0, 0.0])
        width = _solve(make, target, multiple)
        fields = dict(cms_hidden_sizes=[width, width], cms_periods=[0, slow],
                      cms_inner_lrs=[0.0, 0.0])
        return HopeConfig(**{**shape, **fields, **overrides})
    variant = "mag" if family == "titans_mag" else "lmm"

    def make(w):
        return TitansConfig(**shape, variant=variant, intermediate_size=w)
    width = _solve(make, target, multiple)
    return TitansConfig(**{**shape, "variant": variant, "intermediate_size": width, **overrides})


def _check(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def main() -> None:
    rows = []
    for size in SIZES:
        for family in FAMILIES:
            cfg = preset_config(family, size)
            rows.append((size, family, count_parameters(cfg)))
    print(f"{'preset':<8}{'family':<16}{'parameters':>15}{'vs transformer':>16}")
    for size, family, n in rows:
        ref = next(c for s, f, c in rows if s == size and f == "transformer")
        print(f"{size:<8}{family:<16}{n:>15,}{100 * (n / ref - 1):>+15.2f}%")


if __name__ == "__main__":
    main()
