"""Replayed as the SAE was trained: sequences begin with BOS as it records it, never with two, built as SAELens
builds them; a note when its model ran in another dtype."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from saehealth.data import sequence_batches
from saehealth.planning import prepend_bos_of

BOS = 0


class CharTokenizer:
    """One token per character (a=1, b=2, ...), BOS = 0."""

    bos_token_id = BOS

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:  # noqa: ARG002
        return [ord(c) - ord("a") + 1 for c in text]

    def __len__(self) -> int:
        return 27


def _sequences(texts, context, prepend_bos):
    dataset = Dataset.from_dict({"text": texts})
    # seed 0 shuffles; a one-row-per-letter corpus keeps the order visible through the letters themselves.
    batches = sequence_batches(dataset, CharTokenizer(), context, 100, 100, 0, prepend_bos=prepend_bos)
    return torch.cat(list(batches)).tolist()


def _saelens_rows(texts, context, prepend_bos):
    """SAELens' concat_and_batch_sequences rule, written out: a row starts with BOS (when prepend_bos) and the
    text; a document that continues a row is preceded by a separator BOS; a document that starts a row is not."""
    order = Dataset.from_dict({"text": texts}).shuffle(seed=0)["text"]
    rows, row = [], None
    for text in order:
        tokens = CharTokenizer().encode(text)
        first = True
        while tokens:
            if row is None:
                row = [BOS] if prepend_bos else []
            elif first:
                row.append(BOS)
            take = context - len(row)
            row, tokens, first = row + tokens[:take], tokens[take:], False
            if len(row) == context:
                rows.append(row)
                row = None
    return rows


@pytest.mark.parametrize("prepend_bos", [True, False])
@pytest.mark.parametrize("context", [3, 4, 5])
def test_sequences_are_built_as_saelens_builds_them(prepend_bos, context):
    texts = ["abc", "def", "", "ghij", "kl", "mnopq"]
    assert _sequences(texts, context, prepend_bos) == _saelens_rows(texts, context, prepend_bos)


def test_no_sequence_starts_with_two_bos():
    for row in _sequences(["abc", "def", "ghi", "jkl"], 4, prepend_bos=True):
        assert row[0] == BOS and row[1] != BOS


def test_without_prepend_bos_sequences_start_with_the_text():
    rows = _sequences(["abcdef", "ghijkl"], 3, prepend_bos=False)
    assert rows[0][0] != BOS
    assert sum(row.count(BOS) for row in rows) <= 1  # only the separator between the two documents


def test_the_first_sequence_of_an_evaluation_has_one_bos():
    (first, *_) = _sequences(["abcdefgh"], 4, prepend_bos=True)
    assert first == [BOS, 1, 2, 3]


class _Loaded:
    def __init__(self, recorded):
        self.prepend_bos = recorded


class _Model:
    class cfg:  # noqa: N801
        default_prepend_bos = False


@pytest.mark.parametrize(("recorded", "expected"), [(True, True), (False, False), (None, False)])
def test_bos_follows_the_sae_else_the_model_family(recorded, expected):
    assert prepend_bos_of(_Loaded(recorded), _Model()) is expected


def test_a_comparison_refuses_saes_that_disagree_on_bos():
    from saehealth.errors import ConfigError
    from saehealth.shared_settings import shared_prepend_bos

    assert shared_prepend_bos(_Model(), [("a", _Loaded(None)), ("b", _Loaded(False))]) is False
    with pytest.raises(ConfigError, match="with and without BOS.*separate runs"):
        shared_prepend_bos(_Model(), [("a", _Loaded(True)), ("b", _Loaded(None))])


def _loaded_with(kwargs: dict, recorded: str | None):
    from types import SimpleNamespace

    from saehealth.loading.base import LoadedSAE

    sae = SimpleNamespace(cfg=SimpleNamespace(metadata=SimpleNamespace(model_from_pretrained_kwargs=kwargs)))
    return LoadedSAE(sae, "sae_lens", "sae_lens", "topk", "blocks.0.hook_resid_post", recorded_dtype=recorded)


@pytest.mark.parametrize(
    ("given", "kwargs", "recorded", "chosen", "source"),
    [
        (None, {}, None, "float32", "the default: the checkpoint records no dtype"),
        (None, {}, "bfloat16", "bfloat16", "the SAE's cfg.json dtype"),
        (None, {"torch_dtype": "torch.float16"}, "bfloat16", "float16", "model_from_pretrained_kwargs torch_dtype"),
        (None, {"dtype": "bfloat16"}, None, "bfloat16", "model_from_pretrained_kwargs dtype"),
        ("float32", {"dtype": "bfloat16"}, "bfloat16", "float32", "--dtype"),
    ],
)
def test_the_default_dtype_is_the_one_the_sae_was_trained_in(given, kwargs, recorded, chosen, source):
    from types import SimpleNamespace

    from saehealth.planning import choose_dtype

    assert choose_dtype(SimpleNamespace(dtype=given), _loaded_with(kwargs, recorded)) == (chosen, source)


def test_the_dtype_note_names_its_source_and_warns_of_a_mismatch_or_a_slow_cpu():
    from types import SimpleNamespace

    from saehealth.planning import dtype_note

    float32 = SimpleNamespace(dtype="float32", device="cpu")
    assert dtype_note(float32, _loaded_with({}, None), "the default: the checkpoint records no dtype") is None
    assert dtype_note(float32, _loaded_with({"dtype": "float32"}, None), "--dtype") is None
    # float32 from the checkpoint, as SAELens records it by default: the evaluation runs as it always did, no note
    assert dtype_note(float32, _loaded_with({}, "float32"), "the SAE's cfg.json dtype") is None
    note = dtype_note(float32, _loaded_with({"dtype": "torch.bfloat16"}, None), "--dtype")
    assert note == (
        "The SAE was trained in bfloat16 (model_from_pretrained_kwargs dtype) but is evaluated in float32 (--dtype)."
    )
    bf16 = SimpleNamespace(dtype="bfloat16", device="cpu")
    note = dtype_note(bf16, _loaded_with({}, "bfloat16"), "the SAE's cfg.json dtype")
    assert note.startswith("Evaluated in bfloat16, the dtype the SAE was trained in (the SAE's cfg.json dtype)")
    assert "bfloat16 on a CPU is several times slower" in note
