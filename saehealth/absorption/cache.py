"""The model-level half of absorption, cached on disk: it depends on the model, hook and seed, not the SAE.

Two kinds of entry per word split under the cache folder (`~/.cache/saehealth/absorption` or `$SAEHEALTH_CACHE`):
- `absorption-words-*`: the split's word indices and the hook's activations at every word (training
  words prompted with training-word examples, test words with test-word examples) and at every test
  word re-prompted for the absorption step;
- `absorption-probes-*`: the split's 26 letter probes under one schedule, with their held-out F1.

An entry is written to a temporary file and renamed, so parallel evaluations never see half an entry. An
entry that cannot be read or does not hold what it should (truncated, garbage, missing or wrong-shaped
arrays) is rebuilt and replaced; a cache folder that cannot be written is skipped. Both are said in the
result's notes, and neither stops the evaluation.

The cache folder is saehealth's own: it holds a `CACHEDIR.TAG` (the Cache Directory Tagging Specification's
marker, which backup tools also honour) that saehealth wrote. A new or empty folder, or one holding only cache
entries, gets one; any other folder (the current folder, a home folder, a folder of the user's files) is not
written to: the evaluation runs without the cache and says so in its notes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from saehealth.fingerprint import weights_fingerprint

# Bump when anything stored in an entry changes meaning.
CACHE_FORMAT = "absorption-v3"


@dataclass
class SplitWords:
    """One word split of the SAEBench words, prompted at one hook."""

    train: torch.Tensor  # (n_train,) int64 indices into the word list
    test: torch.Tensor  # (n_test,) int64
    probe_acts: torch.Tensor  # (n_words, d) float32: the letter and k-sparse probes' prompts
    absorption_acts: torch.Tensor  # (n_test, d) float32: fresh prompts of the test words for the absorption step


@dataclass
class LetterProbes:
    """One split's letter probes: weights (26, d), biases (26,), held-out F1 (26,; NaN: letter not probed)."""

    weight: torch.Tensor
    bias: torch.Tensor
    f1: torch.Tensor  # float64 so an F1 of exactly 0.6 stays at, not above, the threshold


Entry = TypeVar("Entry", SplitWords, LetterProbes)


class CacheProblem(Exception):
    """An entry that is not what it should be; the message says what was wrong."""


def model_fingerprint(model) -> str:
    """The model's weights fingerprint plus its tokenizer's vocabulary."""
    digest = hashlib.sha256(weights_fingerprint(model).encode())
    digest.update(json.dumps(sorted(model.tokenizer.get_vocab().items())).encode())
    return digest.hexdigest()


def entry_stem(kind: str, model_key: str, hook_name: str, seed: int, split: int, extra: dict | None = None) -> str:
    """File stem for an entry of `kind` ("words" or "probes") of word split `split` of `seed`."""
    payload = json.dumps(
        {"format": CACHE_FORMAT, "model": model_key, "hook_name": hook_name, "seed": seed, "split": split}
        | (extra or {}),
        sort_keys=True,
    )
    safe_hook = re.sub(r"[^A-Za-z0-9_.-]", "_", hook_name)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:20]
    return f"absorption-{kind}-{safe_hook}-seed{seed}-split{split}-{digest}"


def read_words(path: Path, train: torch.Tensor, test: torch.Tensor, d_model: int) -> SplitWords:
    """A words entry of the split (train, test), checked array by array; raises CacheProblem."""
    t = _load(path)
    data = SplitWords(**{name: t.get(name) for name in ("train", "test", "probe_acts", "absorption_acts")})
    for name, value in vars(data).items():
        if value is None:
            raise CacheProblem(f"it has no {name} array")
    if not (torch.equal(data.train, train) and torch.equal(data.test, test)):
        raise CacheProblem("its word split is not this split")
    _expect(data.probe_acts, (len(train) + len(test), d_model), torch.float32, "probe_acts")
    _expect(data.absorption_acts, (len(test), d_model), torch.float32, "absorption_acts")
    if not (torch.isfinite(data.probe_acts).all() and torch.isfinite(data.absorption_acts).all()):
        raise CacheProblem("its activations are not finite")
    return data


def read_probes(path: Path, d_model: int) -> LetterProbes:
    """A probes entry, checked; raises CacheProblem."""
    t = _load(path)
    probes = LetterProbes(**{name: t.get(name) for name in ("weight", "bias", "f1")})
    for name, value in vars(probes).items():
        if value is None:
            raise CacheProblem(f"it has no {name} array")
    _expect(probes.weight, (26, d_model), torch.float32, "weight")
    _expect(probes.bias, (26,), torch.float32, "bias")
    _expect(probes.f1, (26,), torch.float64, "f1")
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


MARKER = "CACHEDIR.TAG"
MARKER_TEXT = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by saehealth (its absorption cache); see https://bford.info/cachedir/\n"
)
_ENTRY_NAME = re.compile(r"^\.?absorption-(words|probes)-.*\.(safetensors|tmp)$")


def own_cache_folder(folder: Path, notes: list[str]) -> Path | None:
    """`folder` when saehealth may cache there (its marker is there, or the folder is new, empty or holds only
    cache entries, and is then marked); None with a note otherwise, or when it cannot be created or marked."""
    folder = Path(folder)
    marker = folder / MARKER
    try:
        if os.path.islink(marker) or (marker.exists() and not marker.is_file()):
            pass  # not a marker saehealth wrote
        elif marker.is_file() and marker.read_text(encoding="utf-8", errors="replace") == MARKER_TEXT:
            return folder
        elif not folder.exists() or all(_ENTRY_NAME.match(name) for name in os.listdir(folder)):
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as stream:
                stream.write(MARKER_TEXT)
            return folder
    except OSError as exc:
        notes.append(f"Could not write the absorption cache in {folder} ({exc.strerror or exc}): ran without it.")
        return None
    notes.append(
        f"The absorption cache folder {folder} holds files that are not saehealth's cache (no {MARKER} of "
        "saehealth's): ran without the cache; set SAEHEALTH_CACHE to a new or empty folder to cache there."
    )
    return None


class Store:
    """The cache folder for one (model, hook, seed); `folder` None: nothing is cached."""

    def __init__(self, folder: Path | None, model, hook_name: str, seed: int, notes: list[str]):
        folder = own_cache_folder(folder, notes) if folder is not None else None
        self.folder, self.hook, self.seed, self.notes = folder, hook_name, seed, notes
        self.key = model_fingerprint(model) if folder is not None else ""

    def fetch(self, kind: str, split: int, extra: dict, read: Callable[[Path], Entry], build: Callable[[], Entry]):
        """The entry read back, or built (and written) when it is missing or unusable; the notes say why."""
        value = self.read(kind, split, extra, read)
        if value is None:
            value = build()
            self.write(kind, split, extra, value)
        return value

    def read(self, kind: str, split: int, extra: dict, read: Callable[[Path], Entry]) -> Entry | None:
        """The entry read back; None when there is no cache, no entry, or an unusable one (noted: rebuild it)."""
        path = self._path(kind, split, extra)
        if path is not None and path.exists():
            try:
                return read(path)
            except CacheProblem as exc:
                self.notes.append(f"Absorption cache entry {path} was unusable ({exc}): rebuilt it.")
        return None

    def write(self, kind: str, split: int, extra: dict, value: SplitWords | LetterProbes) -> None:
        """Store a built entry (nothing without a cache folder; a folder that cannot be written is noted once)."""
        path = self._path(kind, split, extra)
        if path is None:
            return
        try:
            tensors = {name: tensor.cpu() for name, tensor in vars(value).items()}
            write_entry(path, tensors, {"hook_name": self.hook, "seed": str(self.seed), "split": str(split)})
        except OSError as exc:
            self.notes.append(
                f"Could not write the absorption cache in {self.folder} ({exc.strerror or exc}): ran without it."
            )
            self.folder = None  # one note, not one per entry

    def _path(self, kind: str, split: int, extra: dict) -> Path | None:
        if self.folder is None:
            return None
        return Path(self.folder) / f"{entry_stem(kind, self.key, self.hook, self.seed, split, extra)}.safetensors"
