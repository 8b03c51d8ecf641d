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

HOPE ablations (NL Table 6) that the config supports are presets too (``ABLATIONS``): HOPE's preset
with one change and nothing resized (``hope_no_cms`` is one CMS level of twice the width, updated
every step, in place of the fast and the slow level: within 0.1% of HOPE's count; ``hope_no_decay``
drops the retention parameters, 3% fewer at ``task``, ``hope_no_momentum`` 0.4% fewer).
Table 6's "w/o inner-projection k/v" have no config switch and are not offered; its
"w/o inner-projection q" is our default HOPE (``smt_q_projection="static"``, decision D5), so the
ablation offered is the other way round, ``hope_adaptive_q``.

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

__all__ = ["ABLATIONS", "FAMILIES", "SIZES", "TASK_FAMILIES", "count_parameters", "preset_config",
           "preset_model_class"]

SIZES = tuple(TRANSFORMER_PRESETS)
FAMILIES = ("transformer", "hope", "hope_attention", "titans", "titans_mag")
ABLATIONS: dict[str, dict[str, Any]] = {
    "hope_no_dgd": {"smt_rule": "gd"},
    "hope_no_momentum": {"smt_momentum": "none"},
    "hope_no_decay": {"smt_retention": "none"},
    "hope_no_cms": {},  # one level of twice the width, see preset_config
    "hope_adaptive_q": {"smt_q_projection": "adaptive"},
}
"""HOPE ablations (NL Table 6): name -> the HopeConfig fields that differ from ``hope``."""
TASK_FAMILIES = FAMILIES + tuple(ABLATIONS)
"""Every name :func:`preset_config` takes: the families, then the HOPE ablations."""
_CLASSES = {"transformer": TransformerForCausalLM, "hope": HopeForCausalLM,
            "hope_attention": HopeForCausalLM, "titans": TitansForCausalLM,
            "titans_mag": TitansForCausalLM}


# Slow CMS period (tokens) and width granularity per preset; the paper sizes use 2**24 and 64.
_SLOW_PERIODS = {"task": 2**14, "tiny": 2**16}
_MULTIPLES = {"task": 4, "tiny": 32}
# Memory chunk size per preset (default 16). Reads inside a chunk see the chunk-start weights
# (decision D2), so a memory only carries information within a string longer than its chunk:
# the synthetic tasks' strings are 1-80 characters, so ``task`` uses 4 (HOPE's two chunk sizes
# and Titans' alike). Measured on 2 cores (batch 32, 42 tokens): HOPE's step costs about 3x
# that at 16, Titans' about 1.6x.
_CHUNKS = {"task": 4}


def preset_model_class(family: str):
    _check(family, TASK_FAMILIES, "family")
    return HopeForCausalLM if family in ABLATIONS else _CLASSES[family]


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
    """The config of ``family`` (one of ``TASK_FAMILIES``) at preset ``size`` (one of ``SIZES``),
    ``overrides`` applied."""
    _check(family, TASK_FAMILIES, "family")
    if family in ABLATIONS:
        hope = preset_config("hope", size)
        fields = dict(ABLATIONS[family])
        if family == "hope_no_cms":
            fields.update(cms_hidden_sizes=[sum(hope.cms_hidden_sizes)], cms_periods=[0],
                          cms_inner_lrs=[0.0])
        return preset_config("hope", size, **{**fields, **overrides})
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
        if size in _CHUNKS:
            fields.update(smt_chunk_size=_CHUNKS[size], smt_proj_chunk_size=_CHUNKS[size])
        return HopeConfig(**{**shape, **fields, **overrides})
    variant = "mag" if family == "titans_mag" else "lmm"

    def make(w):
        return TitansConfig(**shape, variant=variant, intermediate_size=w)
    width = _solve(make, target, multiple)
    chunk = {"chunk_size": _CHUNKS[size]} if size in _CHUNKS else {}
    return TitansConfig(**{**shape, "variant": variant, "intermediate_size": width, **chunk,
                           **overrides})


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
