"""Tokens as text a person can read, and the model's tokenizer without the model.

Byte-level BPE pieces ('Ġfoo', 'Ċ', 'Ã©') are mapped back to their bytes and decoded as UTF-8, a piece
that is only part of a character becoming U+FFFD; SentencePiece pieces ('▁foo', '<0x0A>') likewise. The
decoded text keeps real spaces; `visible` then shows what would be invisible: a newline as ↵, a tab as
→, other control characters as their Unicode control pictures, and (where a token stands alone, as in a
logit-lens list) a leading space as ␣. Escaping for HTML or markdown is the renderer's job.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from saehealth import builtin
from saehealth.errors import ModelError

_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPECIAL = {"\n": "↵", "\t": "→", "\r": "␍"}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the
    other 68 bytes for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    extra = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def load_tokenizer(model_name: str):
    """The tokenizer the evaluation used for `model_name`, loaded without the model (as TransformerLens
    sets it up: EOS, PAD and BOS fall back to '<|endoftext|>' / EOS when the tokenizer has none)."""
    from pathlib import Path

    if model_name == builtin.BUILTIN_MODEL:
        return _unbounded(builtin.load_builtin_tokenizer())
    path = Path(model_name).expanduser()
    try:
        if path.is_dir() and (path / builtin.MODEL_CONFIG_FILE).is_file():
            return _unbounded(builtin.load_builtin_tokenizer(path))
        from transformers import AutoTokenizer

        if path.is_dir():
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        else:
            from transformer_lens.loading_from_pretrained import get_official_model_name

            tokenizer = AutoTokenizer.from_pretrained(get_official_model_name(model_name))
    except Exception as exc:  # offline and not cached, unknown name, missing files: all mean "no tokenizer"
        raise ModelError(f"Could not load the tokenizer of {model_name} ({type(exc).__name__}).") from exc
    if tokenizer.eos_token is None:
        tokenizer.eos_token = "<|endoftext|>"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    return _unbounded(tokenizer)


def _unbounded(tokenizer):
    # Whole documents are tokenized and then cut into sequences: the model's length limit does not apply.
    tokenizer.model_max_length = 2**62
    return tokenizer


class TokenText:
    """Readable text of token ids for one tokenizer (decoded once per id)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.size = len(tokenizer)
        self.byte_level = _is_byte_level(tokenizer)
        self._cache: dict[int, str] = {}

    def text(self, token_id: int) -> str:
        """The token's text with real spaces and newlines ('\\n', ' foo'); U+FFFD for partial characters."""
        token_id = int(token_id)
        if token_id not in self._cache:
            self._cache[token_id] = self._decode(token_id)
        return self._cache[token_id]

    def _decode(self, token_id: int) -> str:
        if not 0 <= token_id < self.size:
            return f"<{token_id}>"
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return f"<{token_id}>"
        if piece in self.tokenizer.all_special_tokens:
            return piece
        if self.byte_level:
            table = _byte_decoder()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece).decode("utf-8", errors="replace")
        if match := _BYTE_TOKEN.match(piece):  # SentencePiece byte fallback
            return bytes([int(match.group(1), 16)]).decode("utf-8", errors="replace")
        if "▁" in piece:
            return piece.replace("▁", " ")
        return self.tokenizer.decode([token_id])


@lru_cache(maxsize=1 << 16)  # pages show the same few thousand token texts hundreds of thousands of times
def visible(text: str, *, mark_leading_space: bool = False) -> str:
    """Make invisible characters visible: ↵ for a newline, → for a tab, control pictures for other
    control characters, and ␣ for a leading space when asked (a token shown on its own)."""
    shown = "".join(_SPECIAL.get(ch) or (chr(0x2400 + ord(ch)) if ord(ch) < 32 else ch) for ch in text)
    if mark_leading_space and shown.startswith(" "):
        shown = "␣" + shown[1:]
    return shown


def _is_byte_level(tokenizer) -> bool:
    """Whether the tokenizer's pieces are GPT-2 style byte-level characters."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    try:
        decoder = json.loads(backend.to_str()).get("decoder") or {}
    except (ValueError, AttributeError):
        return False
    kinds = [decoder.get("type")] + [d.get("type") for d in decoder.get("decoders") or []]
    return "ByteLevel" in kinds
