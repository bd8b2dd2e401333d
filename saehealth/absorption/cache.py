"""The model-level half of absorption, cached on disk: it depends on the model, hook and seed, not the SAE.

Two kinds of entry under the cache folder (`~/.cache/saehealth` or `$SAEHEALTH_CACHE`):
- `absorption-words-*`: every SAEBench word's token id, letter and activation at the hook under two
  independent prompts (one for the letter probes and k-sparse probes, one for the absorption step);
- `absorption-probes-*`: the letter probes of each word split under one schedule, with their held-out F1.

An entry is written to a temporary file and renamed, so parallel evaluations never see half an entry. An
entry that cannot be read or does not hold what it should (truncated, garbage, missing or wrong-shaped
arrays) is rebuilt and replaced; a cache folder that cannot be written is skipped. Both are said in the
result's notes, and neither stops the evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from saehealth.fingerprint import weights_fingerprint

# Bump when anything stored in an entry changes meaning.
CACHE_FORMAT = "absorption-v2"


@dataclass
class WordData:
    """Every SAEBench word of the model's tokenizer, prompted twice at one hook."""

    word_ids: torch.Tensor  # (n,) int64 token ids
    labels: torch.Tensor  # (n,) int64 first letter 0..25
    probe_acts: torch.Tensor  # (n, d) float32: prompts for the letter and k-sparse probes
    absorption_acts: torch.Tensor  # (n, d) float32: fresh prompts for the absorption step


@dataclass
class LetterProbes:
    """Per word split: letter probe weights (S, 26, d), biases (S, 26), held-out F1 (S, 26; NaN: no test word)."""

    weight: torch.Tensor
    bias: torch.Tensor
    f1: torch.Tensor  # float64 so an F1 of exactly 0.6 stays at, not above, the threshold


class CacheProblem(Exception):
    """An entry that is not what it should be; the message says what was wrong."""


def model_fingerprint(model) -> str:
    """The model's weights fingerprint plus its tokenizer's vocabulary."""
    digest = hashlib.sha256(weights_fingerprint(model).encode())
    digest.update(json.dumps(sorted(model.tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()


def entry_stem(kind: str, model_key: str, hook_name: str, seed: int, extra: dict | None = None) -> str:
    """File stem for an entry of `kind` ("words" or "probes")."""
    payload = json.dumps(
        {"format": CACHE_FORMAT, "model": model_key, "hook_name": hook_name, "seed": seed, **(extra or {})},
        sort_keys=True,
    )
    safe_hook = re.sub(r"[^A-Za-z0-9_.-]", "_", hook_name)
    return f"absorption-{kind}-{safe_hook}-seed{seed}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def read_words(path: Path, d_model: int, vocab_size: int) -> WordData:
    """A words entry, checked array by array; raises CacheProblem."""
    t = _load(path)
    data = WordData(**{name: t.get(name) for name in ("word_ids", "labels", "probe_acts", "absorption_acts")})
    for name, value in vars(data).items():
        if value is None:
            raise CacheProblem(f"it has no {name} array")
    n = len(data.word_ids)
    _expect(data.word_ids, (n,), torch.int64, "word_ids")
    _expect(data.labels, (n,), torch.int64, "labels")
    _expect(data.probe_acts, (n, d_model), torch.float32, "probe_acts")
    _expect(data.absorption_acts, (n, d_model), torch.float32, "absorption_acts")
    if n == 0 or int(data.labels.min()) < 0 or int(data.labels.max()) > 25:
        raise CacheProblem("its letter labels are not 0..25")
    if int(data.word_ids.min()) < 0 or int(data.word_ids.max()) >= vocab_size:
        raise CacheProblem("its word ids are outside the tokenizer's vocabulary")
    if not (torch.isfinite(data.probe_acts).all() and torch.isfinite(data.absorption_acts).all()):
        raise CacheProblem("its activations are not finite")
    return data


def read_probes(path: Path, n_splits: int, d_model: int) -> LetterProbes:
    """A probes entry, checked; raises CacheProblem."""
    t = _load(path)
    probes = LetterProbes(**{name: t.get(name) for name in ("weight", "bias", "f1")})
    for name, value in vars(probes).items():
        if value is None:
            raise CacheProblem(f"it has no {name} array")
    _expect(probes.weight, (n_splits, 26, d_model), torch.float32, "weight")
    _expect(probes.bias, (n_splits, 26), torch.float32, "bias")
    _expect(probes.f1, (n_splits, 26), torch.float64, "f1")
    if not (torch.isfinite(probes.weight).all() and torch.isfinite(probes.bias).all()):
        raise CacheProblem("its probe weights are not finite")
    return probes


def write_entry(path: Path, tensors: dict[str, torch.Tensor], info: dict[str, str]) -> None:
    """Atomically (temporary file, then rename): parallel evaluations of a sweep may race to write it."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"format": CACHE_FORMAT, **info})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CacheProblem(f"it is not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from exc


def _expect(tensor: torch.Tensor, shape: tuple, dtype: torch.dtype, name: str) -> None:
    if tuple(tensor.shape) != shape or tensor.dtype != dtype:
        raise CacheProblem(f"its {name} is {tuple(tensor.shape)} {tensor.dtype}, expected {shape} {dtype}")
