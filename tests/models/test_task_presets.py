"""The ``task`` preset of every task family and the HOPE ablations (NL Table 6)."""

from __future__ import annotations

import pytest
import torch

from nestlearn.models.hope import HopeConfig, HopeForCausalLM
from nestlearn.models.presets import (
    ABLATIONS,
    FAMILIES,
    TASK_FAMILIES,
    count_parameters,
    preset_config,
    preset_model_class,
)


def test_task_families_are_the_families_then_the_ablations():
    assert TASK_FAMILIES == FAMILIES + tuple(ABLATIONS)
    assert set(ABLATIONS) == {"hope_no_dgd", "hope_no_momentum", "hope_no_decay", "hope_no_cms",
                              "hope_adaptive_q"}


@pytest.mark.parametrize("family", TASK_FAMILIES)
def test_every_task_family_builds_and_runs_at_the_task_preset(family):
    config = preset_config(family, "task", vocab_size=9)
    assert config.vocab_size == 9 and config.hidden_size == 64
    with torch.device("meta"):
        model = preset_model_class(family)(config)
    assert model.get_input_embeddings().weight.shape == (9, 64)
    # Within 5% of Transformer++ at the same vocabulary (hope_no_decay drops the retention
    # parameters, the largest change).
    ref = count_parameters(preset_config("transformer", "task", vocab_size=9))
    assert abs(count_parameters(config) / ref - 1) < 0.05


@pytest.mark.parametrize("family", ["hope", "hope_no_cms", "titans"])
def test_task_models_forward(family):
    model = preset_model_class(family)(preset_config(family, "task", vocab_size=7))
    logits = model(input_ids=torch.randint(0, 7, (2, 9))).logits
    assert logits.shape == (2, 9, 7) and torch.isfinite(logits).all()


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_ablations_differ_from_hope_only_in_their_fields(ablation):
    hope = preset_config("hope", "task").to_dict()
    config = preset_config(ablation, "task")
    assert isinstance(config, HopeConfig) and preset_model_class(ablation) is HopeForCausalLM
    changed = {k for k, v in config.to_dict().items() if hope.get(k) != v}
    expected = set(ABLATIONS[ablation])
    if ablation == "hope_no_cms":
        expected = {"cms_hidden_sizes", "cms_periods", "cms_inner_lrs"}
    assert changed == expected
    for field, value in ABLATIONS[ablation].items():
        assert getattr(config, field) == value


def test_hope_no_cms_is_one_level_at_hopes_parameter_count():
    hope = preset_config("hope", "task")
    config = preset_config("hope_no_cms", "task")
    assert len(config.cms_hidden_sizes) == 1
    assert list(config.cms_hidden_sizes) == [sum(hope.cms_hidden_sizes)]
    assert list(config.cms_periods) == [0]
    assert abs(count_parameters(config) / count_parameters(hope) - 1) < 0.01
    # at the tiny preset too
    tiny = preset_config("hope_no_cms", "tiny")
    assert abs(count_parameters(tiny) / count_parameters(preset_config("hope", "tiny")) - 1) < 0.01


def test_overrides_apply_to_ablations():
    config = preset_config("hope_no_dgd", "task", vocab_size=11, smt_chunk_size=8)
    assert (config.vocab_size, config.smt_chunk_size, config.smt_rule) == (11, 8, "gd")


def test_task_preset_memories_use_chunks_of_4():
    hope = preset_config("hope", "task")
    assert hope.smt_chunk_size == 4 and hope.smt_proj_chunk_size == 4
    for family in ("titans", "titans_mag"):
        assert preset_config(family, "task").chunk_size == 4
    for ablation in ABLATIONS:
        assert preset_config(ablation, "task").smt_chunk_size == 4
    # other presets keep the default
    assert preset_config("hope", "tiny").smt_chunk_size == 16
    assert preset_config("titans", "tiny").chunk_size == 16


def test_unknown_family_is_a_value_error():
    with pytest.raises(ValueError, match=r"family must be one of .*hope_no_cms.*'gpt'"):
        preset_config("gpt", "task")
    with pytest.raises(ValueError, match="family must be one of"):
        preset_model_class("gpt")
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_config("hope_no_dgd", "huge")
