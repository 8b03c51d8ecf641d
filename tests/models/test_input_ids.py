"""Bad token ids in the Python API: a ValueError/TypeError naming the problem, never an
IndexError from the embedding (issue: hardening, case 4)."""

import pytest
import torch

from nestlearn.models.presets import FAMILIES, preset_config, preset_model_class


@pytest.fixture(scope="module", params=FAMILIES)
def model(request):
    torch.manual_seed(0)
    family = request.param
    return preset_model_class(family)(preset_config(family, "task", vocab_size=16))


@pytest.mark.parametrize("ids, error, match", [
    (torch.tensor([[1, 2, 16]]), ValueError, r"token ids in \[0, 15\].*from 1 to 16"),
    (torch.tensor([[-1, 2]]), ValueError, r"token ids in \[0, 15\].*from -1 to 2"),
    (torch.tensor([1, 2, 3]), ValueError, r"2-D \[batch, tokens\].*shape \(3,\)"),
    (torch.zeros(1, 0, dtype=torch.long), ValueError, r"at least one token.*\(1, 0\)"),
    (torch.tensor([[1.0, 2.0]]), TypeError, "integer tensor"),
    ([[1, 2]], TypeError, "must be a torch.Tensor, got list"),
], ids=["too-large", "negative", "1-D", "empty", "float", "list"])
def test_bad_input_ids_are_named(model, ids, error, match):
    with pytest.raises(error, match=match):
        model(input_ids=ids)


def test_good_ids_still_run(model):
    out = model(input_ids=torch.tensor([[0, 15, 3]], dtype=torch.int32))
    assert out.logits.shape == (1, 3, 16)
