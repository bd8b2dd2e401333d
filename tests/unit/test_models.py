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


def _tiny_gpt2_folder(folder, drop_n_ctx=False):
    import json

    from transformers import GPT2Config, GPT2LMHeadModel

    from saehealth import builtin

    tokenizer = builtin.load_builtin_tokenizer()
    GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=32, n_layer=1, n_head=2)
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    if drop_n_ctx:
        config.pop("n_ctx", None)
    return config


def test_a_gpt2_config_without_n_ctx_loads_with_its_n_positions(tmp_path):
    import json

    config = _tiny_gpt2_folder(tmp_path, drop_n_ctx=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "n_ctx" not in json.loads((tmp_path / "config.json").read_text())
    assert models.load_model(str(tmp_path)).cfg.n_ctx == 32


def test_an_architecture_transformer_lens_cannot_convert_is_refused_in_one_line(tmp_path):
    import json

    config = _tiny_gpt2_folder(tmp_path)
    for architecture, reason in [
        ("Gemma3ForConditionalGeneration", "multimodal"),
        ("BertForMaskedLM", "not a causal language model"),
        ("MambaForCausalLM", "TransformerLens cannot convert"),
    ]:
        (tmp_path / "config.json").write_text(json.dumps({**config, "architectures": [architecture]}))
        with pytest.raises(ModelError, match=reason) as caught:
            models.load_model(str(tmp_path))
        assert "\n" not in str(caught.value)


def test_a_folder_without_a_tokenizer_says_it_needs_one(tmp_path):
    _tiny_gpt2_folder(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(ModelError, match="no usable tokenizer.*pretokenized dataset"):
        models.load_model(str(tmp_path))


def test_a_context_capped_by_transformer_lens_is_lifted_to_what_the_sae_needs(tmp_path):
    """TransformerLens caps Mistral at 2,048 tokens whatever the model allows: an SAE of 4,096 gets 4,096."""
    from transformers import MistralConfig, MistralForCausalLM

    from saehealth import builtin

    tokenizer = builtin.load_builtin_tokenizer()
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192, sliding_window=None,
    )  # fmt: skip
    MistralForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert models.load_model(str(tmp_path)).cfg.n_ctx == 2048
    assert models.load_model(str(tmp_path), context=4096).cfg.n_ctx == 4096
    assert models.load_model(str(tmp_path), context=10_000).cfg.n_ctx == 2048  # beyond the model: planning refuses
