"""The embedded default: a tiny language model, its tokenizer and corpus, shipped as package data.

No hub is reachable from CI (or from many clusters), so saehealth carries a small real model that it
trained itself on CPython's documentation (see scripts/build_builtin_assets.py). Every test and the demo
run on it, on CPU, in seconds.
"""

from __future__ import annotations

import gzip
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

BUILTIN_MODEL = "saehealth/tiny-pydoc-lm"
BUILTIN_DATASET = "saehealth/pydoc-corpus"
BUILTIN_SPLITS = ("train", "validation")

END_OF_TEXT = "<|endoftext|>"

CORPUS_FILE = "corpus.jsonl.gz"
TOKENIZER_DIR = "tokenizer"
MODEL_CONFIG_FILE = "model_config.json"
MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_CARD_FILE = "model_card.json"


def assets_dir() -> Path:
    """Folder holding the shipped assets (inside the installed package)."""
    return Path(str(resources.files("saehealth") / "assets"))


def read_corpus(path: Path | None = None) -> list[dict]:
    """Documents of the built-in corpus: dicts with `id`, `split` and `text`."""
    path = path or assets_dir() / CORPUS_FILE
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def load_builtin_tokenizer(assets: Path | None = None):
    """The built-in byte-level BPE tokenizer as a Hugging Face fast tokenizer (BOS prepended)."""
    from transformers import AutoTokenizer

    # Loaded from its folder by path, so TransformerLens can reload it with add_bos_token=True.
    return AutoTokenizer.from_pretrained(str((assets or assets_dir()) / TOKENIZER_DIR))


@lru_cache(maxsize=1)
def model_card() -> dict:
    """What the asset build measured: validation loss, spelling probe, training settings."""
    return json.loads((assets_dir() / MODEL_CARD_FILE).read_text())
