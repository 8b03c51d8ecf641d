"""What the training loop asks a model instead of branching on its family: FSDP units, inner
gradients and whether the carried state is bounded."""

import pytest

from nestlearn.models.presets import preset_config, preset_model_class

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 64}
SLOW = {"cms_hidden_sizes": [32, 32], "cms_periods": [0, 1024], "cms_inner_lrs": [0.0, 0.0]}
IN_CONTEXT = {"cms_hidden_sizes": [32, 32], "cms_periods": [0, 16], "cms_inner_lrs": [0.0, 0.1]}


def tiny(family, **overrides):
    return preset_model_class(family)(preset_config(family, "tiny", **SMALL, **overrides))


def test_hope_fsdp_units_are_blocks_or_mixers():
    slow = tiny("hope", **SLOW)
    assert slow.fsdp_units() == list(slow.model.layers) and not slow.takes_inner_grads
    in_context = tiny("hope", **IN_CONTEXT)
    assert in_context.takes_inner_grads
    assert in_context.fsdp_units() == [b.mixer for b in in_context.model.layers]


@pytest.mark.parametrize("family", ["transformer", "titans"])
def test_default_fsdp_units_are_the_blocks(family):
    model = tiny(family, intermediate_size=64)
    assert model.fsdp_units() == list(model.model.layers) and not model.takes_inner_grads


@pytest.mark.parametrize(("family", "overrides", "bounded"), [
    pytest.param("transformer", {"intermediate_size": 64}, False, id="transformer-global"),
    pytest.param("transformer", {"intermediate_size": 64, "sliding_window": 8}, True,
                 id="transformer-window"),
    pytest.param("hope", SLOW, True, id="hope"),
    pytest.param("hope_attention", SLOW, False, id="hope-attention-global"),
    pytest.param("hope_attention", {**SLOW, "sliding_window": 8}, True, id="hope-attention-window"),
    pytest.param("titans", {"intermediate_size": 64}, True, id="titans"),
])
def test_state_is_bounded(family, overrides, bounded):
    assert tiny(family, **overrides).state_is_bounded is bounded
