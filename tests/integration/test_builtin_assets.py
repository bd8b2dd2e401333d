"""The embedded default: corpus, tokenizer and model load offline and are what the README says."""

from __future__ import annotations

import json

import pytest

import saehealth
from saehealth import builtin, spelling

README_VALIDATION_CE = 4.463  # README "The built-in model"


def test_corpus_is_split_by_document_with_enough_validation():
    docs = builtin.read_corpus()
    val = [d for d in docs if d["split"] == "validation"]
    train = [d for d in docs if d["split"] == "train"]
    assert {d["id"] for d in val}.isdisjoint(d["id"] for d in train)
    share = sum(len(d["text"]) for d in val) / sum(len(d["text"]) for d in docs)
    assert share >= 0.05
    assert sum(len(d["text"]) for d in docs) > 1_500_000


def test_builtin_dataset_and_tokenizer(builtin_model):
    validation = saehealth.load_dataset(saehealth.BUILTIN_DATASET, split="validation")
    assert validation.column_names[0] == "text" and len(validation) > 10
    tokenizer = builtin_model.tokenizer
    assert len(tokenizer) == 4096
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.pad_token == builtin.END_OF_TEXT
    assert builtin_model.to_tokens("def f():")[0, 0].item() == tokenizer.bos_token_id
    # every first-letter answer is one token, so the spelling curriculum is well formed
    for letter in spelling.LETTERS:
        assert len(tokenizer.encode(f" {letter}", add_special_tokens=False)) == 1


def test_validation_loss_is_what_the_readme_says(builtin_model):
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
    from build_builtin_assets import _token_stream, validation_loss

    val_ids = torch.tensor(_token_stream(builtin_model.tokenizer, "validation", builtin.assets_dir()))
    loss = validation_loss(builtin_model, val_ids)
    assert loss == pytest.approx(builtin.model_card()["validation_ce_loss"], abs=2e-3)
    assert loss == pytest.approx(README_VALIDATION_CE, abs=2e-3)
    assert loss < 5.0  # far below uniform (ln 4096 = 8.3)


@pytest.mark.slow
def test_builtin_model_can_spell(builtin_model):
    """The gate for absorption: a first-letter probe with held-out F1 > 0.6 on at least 20 letters."""
    f1 = spelling.first_letter_probe_f1(builtin_model, "blocks.0.hook_resid_post")
    passing = [letter for letter, score in f1.items() if score > 0.6]
    assert len(passing) >= 20, json.dumps(f1)


def test_unknown_names_list_what_is_accepted():
    from saehealth.errors import DataError, ModelError

    with pytest.raises(ModelError, match="built-in model"):
        saehealth.load_model("gtp2-smal")
    with pytest.raises(DataError, match="no split"):
        saehealth.load_dataset(saehealth.BUILTIN_DATASET, split="test")
    with pytest.raises(DataError, match="does not exist"):
        saehealth.load_dataset("./no/such/file.jsonl")
