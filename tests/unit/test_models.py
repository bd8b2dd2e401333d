"""Models are loaded the way the SAE saw them: no TransformerLens weight processing, plus the checkpoint's kwargs."""

from __future__ import annotations

import pytest

from saehealth import models
from saehealth.errors import ModelError


@pytest.fixture
def recorded(monkeypatch):
    """Calls to HookedTransformer.from_pretrained (nothing is downloaded)."""
    calls = []

    class FakeModel:
        def eval(self):
            return self

    def from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        return FakeModel()

    monkeypatch.setattr(models._hooked_transformer(), "from_pretrained", staticmethod(from_pretrained))
    return calls


def test_pretrained_models_load_without_weight_processing(recorded):
    models.load_model("gpt2")
    ((name, kwargs),) = recorded
    assert name == "gpt2"
    assert {k: kwargs[k] for k in models.NO_PROCESSING} == models.NO_PROCESSING
    assert kwargs["fold_ln"] is False and kwargs["center_writing_weights"] is False


def test_the_checkpoints_kwargs_apply_on_top_but_not_over_our_options(recorded):
    models.load_model("gpt2", dtype="bfloat16", from_pretrained_kwargs={"center_writing_weights": True, "dtype": "x"})
    ((_, kwargs),) = recorded
    assert kwargs["center_writing_weights"] is True and kwargs["center_unembed"] is False
    assert str(kwargs["dtype"]) == "torch.bfloat16"


def test_processing_label_names_only_what_differs():
    assert models.processing_label(None) == "no processing"
    assert models.processing_label({"center_writing_weights": False}) == "no processing"
    assert models.processing_label({"fold_ln": True, "n_devices": 1}) == "fold_ln=True, n_devices=1"


def test_an_unknown_model_name_is_a_model_error():
    with pytest.raises(ModelError, match="Unknown model"):
        models.load_model("definitely-not-a-model")


def test_a_local_hugging_face_folder_loads_from_its_own_config(tmp_path):
    """A randomly initialised GPT-2-style checkpoint of a shape no hub model has: built from its config.json,
    nothing fetched, computing what the Hugging Face model computes."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from saehealth import builtin

    tokenizer = builtin.load_builtin_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_ctx=32, n_embd=64, n_layer=2, n_head=2)
    hf_model = GPT2LMHeadModel(config).eval()
    hf_model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model = models.load_model(str(tmp_path))
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (2, 64, len(tokenizer))
    tokens = torch.randint(0, len(tokenizer), (2, 16))
    with torch.no_grad():
        assert model(tokens) == pytest.approx(hf_model(tokens).logits, abs=1e-4)
