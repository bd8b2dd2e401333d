"""minSAE's activation cache (cloneofsimo/minSAE, `sae.py: cache_activations`).

Per split it writes `<cache>/<split>/shard_00000.safetensors, ...`, each holding one `activations` tensor of
shape (tokens, d_model): the sequences of `context_length` tokens (every prompt truncated and padded to
exactly that length) of at least `shard_size` prompts, concatenated; and `<cache>/<split>/metadata.json`
with `model_name`, `layer_idx`, `activation_dim`, `context_length`, `num_shards`, `shard_size`, ... It
hooks the output of `layers.{layer_idx}.mlp.down_proj`: TransformerLens' `blocks.{layer_idx}.hook_mlp_out`.
Token ids are not kept, so special tokens (BOS, padding) cannot be told apart from text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from saehealth.activations.source import ActivationBatch, ActivationSource, CacheInfo, flat_batches, torch_dtype
from saehealth.errors import DataError

METADATA_FILE = "metadata.json"
SHARD_GLOB = "shard_*.safetensors"
TENSOR_NAME = "activations"


def is_minsae_folder(path: Path) -> bool:
    """A folder holding minSAE shards or its metadata.json."""
    return path.is_dir() and ((path / METADATA_FILE).is_file() or any(path.glob(SHARD_GLOB)))


class MinSAECache(ActivationSource):
    """One split folder of a minSAE cache, read shard by shard."""

    def __init__(self, folder: Path):
        from safetensors import safe_open

        self.folder = folder
        meta_path = folder / METADATA_FILE
        if not meta_path.is_file():
            raise DataError(
                f"{folder} holds minSAE shards but no {METADATA_FILE} (minSAE writes one beside them): restore it, "
                "or pass one shard file as --activations with --context-length N."
            )
        try:
            metadata = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise DataError(f"{meta_path} is not valid JSON ({exc}): restore minSAE's metadata file.") from exc
        if not isinstance(metadata, dict):
            raise DataError(
                f"{meta_path} holds a JSON {type(metadata).__name__}, not minSAE's metadata object "
                '({"context_length": ..., ...}): restore minSAE\'s metadata file.'
            )
        context = metadata.get("context_length")
        if not isinstance(context, int) or isinstance(context, bool) or context < 1:
            raise DataError(f"{meta_path} gives no context_length (a positive integer): add the one the cache used.")

        self.shards: list[tuple[Path, int]] = []
        widths: dict[int, str] = {}
        dtypes: dict[str, str] = {}
        for shard in sorted(folder.glob(SHARD_GLOB)):
            try:
                with safe_open(str(shard), framework="pt") as f:
                    if TENSOR_NAME not in f.keys():
                        raise DataError(f"{shard} has no {TENSOR_NAME!r} tensor: it is not a minSAE shard.")
                    view = f.get_slice(TENSOR_NAME)
                    shape, dtype = view.get_shape(), view.get_dtype()
            except DataError:
                raise
            except Exception as exc:  # safetensors raises its own error types for truncated headers
                raise DataError(f"Could not read {shard} ({exc}): the shard is corrupt; regenerate it.") from exc
            if len(shape) != 2:
                raise DataError(f"{shard} holds activations of shape {tuple(shape)}: minSAE shards are (tokens, d).")
            if shape[0] % context:
                raise DataError(
                    f"{shard} holds {shape[0]:,} tokens, not whole sequences of context_length {context}: "
                    f"check context_length in {meta_path}."
                )
            widths.setdefault(shape[1], shard.name)
            dtypes.setdefault(dtype, shard.name)
            self.shards.append((shard, shape[0]))
        if len(widths) > 1:
            (w1, s1), (w2, s2) = list(widths.items())[:2]
            raise DataError(f"{folder} mixes activation widths ({s1}: {w1}, {s2}: {w2}): regenerate the cache.")
        if len(dtypes) > 1:
            (d1, s1), (d2, s2) = list(dtypes.items())[:2]
            raise DataError(f"{folder} mixes activation dtypes ({s1}: {d1}, {s2}: {d2}): regenerate the cache.")
        n_tokens = sum(n for _, n in self.shards)
        if n_tokens == 0:
            raise DataError(f"{folder} holds no activations (no non-empty {SHARD_GLOB}): point at a filled cache.")
        width = next(iter(widths))
        declared = metadata.get("activation_dim")
        if declared is not None and (not _whole(declared) or declared != width):
            raise DataError(f"{meta_path} says activation_dim {declared} but the shards are {width} wide: regenerate.")
        layer = metadata.get("layer_idx")
        self.info = CacheInfo(
            path=folder,
            layout="minsae",
            description="minSAE activation cache",
            d_in=width,
            dtype=torch_dtype(next(iter(dtypes)), str(folder)),
            n_tokens=n_tokens,
            sequence_length=context,
            keeps_sequences=False,
            hook_name=f"blocks.{layer}.hook_mlp_out" if _whole(layer) else None,
            model_name=model if isinstance(model := metadata.get("model_name"), str) else None,
        )

    def batches(self, batch_size: int, context: int) -> Iterator[ActivationBatch]:
        from safetensors import safe_open

        for shard, n_tokens in self.shards:
            with safe_open(str(shard), framework="pt") as f:
                view = f.get_slice(TENSOR_NAME)
                yield from flat_batches(lambda a, b, view=view: view[a:b], n_tokens, context, batch_size, shard.name)


def _whole(value) -> bool:
    """A JSON number that is a whole number, 0 or more (the metadata file may hold anything)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
