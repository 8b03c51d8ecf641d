"""HopeConfig field renames (the ``smt_`` prefix): configs saved with the old names load with a
warning and give the same model; old and new names together must agree; saving writes only
the new names; ``smt_layer_kwargs`` covers the layer's constructor."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from nestlearn import HopeConfig, HopeForCausalLM
from nestlearn.layers.self_modifying_titans import SelfModifyingTitans
from nestlearn.models.hope.configuration_hope import LEGACY_NAMES, SMT_SETTINGS

SMALL = {"vocab_size": 37, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
         "cms_hidden_sizes": [8, 8]}
OLD = {"memory_expansion": 3, "chunk_size": 4, "proj_chunk_size": 2, "conv_size": 3,
       "eta_max": 0.2, "q_projection": "adaptive", "write_grad": "detach"}


def test_old_names_config_json_loads_with_warning_and_same_logits(tmp_path):
    assert set(OLD) == set(LEGACY_NAMES)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hope", **SMALL, **OLD}))
    with pytest.warns(FutureWarning, match="chunk_size -> smt_chunk_size"):
        old = HopeConfig.from_pretrained(tmp_path)
    new = HopeConfig(**SMALL, **{LEGACY_NAMES[k]: v for k, v in OLD.items()})
    assert old.to_dict() == new.to_dict()
    ids = torch.randint(0, 37, (2, 9), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    a = HopeForCausalLM(old).eval()
    torch.manual_seed(0)
    b = HopeForCausalLM(new).eval()
    assert a.state_dict().keys() == b.state_dict().keys()
    assert torch.equal(a(ids).logits, b(ids).logits)


@pytest.mark.parametrize("old", sorted(LEGACY_NAMES))
def test_old_name_kwarg_and_from_dict_warn(old):
    with pytest.warns(FutureWarning, match=f"{old} -> {LEGACY_NAMES[old]}"):
        config = HopeConfig(**SMALL, **{old: OLD[old]})
    assert getattr(config, LEGACY_NAMES[old]) == OLD[old]
    with pytest.warns(FutureWarning, match=f"{old} -> {LEGACY_NAMES[old]}"):
        again = HopeConfig.from_dict({**SMALL, old: OLD[old]})
    assert again.to_dict() == config.to_dict()


def test_old_and_new_name_must_agree():
    with pytest.raises(ValueError, match="smt_chunk_size"):
        HopeConfig(**SMALL, chunk_size=4, smt_chunk_size=16)
    with pytest.warns(FutureWarning):
        assert HopeConfig(**SMALL, chunk_size=4, smt_chunk_size=4).smt_chunk_size == 4


def test_save_load_round_trip_writes_only_new_names(tmp_path):
    with pytest.warns(FutureWarning):
        config = HopeConfig(**SMALL, **OLD)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert not set(saved) & set(LEGACY_NAMES)
    assert {f"smt_{n}" for n in SMT_SETTINGS} <= set(saved)
    assert HopeConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_validation_errors_name_the_new_field():
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="smt_conv_size"):
        HopeConfig(**SMALL, conv_size=0)


def test_smt_layer_kwargs_cover_the_layer_constructor():
    params = inspect.signature(SelfModifyingTitans.__init__).parameters
    keyword = {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert set(SMT_SETTINGS) == keyword
    config = HopeConfig(**SMALL, smt_chunk_size=4, smt_write_grad="detach")
    kwargs = config.smt_layer_kwargs()
    assert kwargs["chunk_size"] == 4 and kwargs["write_grad"] == "detach"
    model = HopeForCausalLM(config)
    assert model.model.layers[0].mixer.chunk_size == 4
