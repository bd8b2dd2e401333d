"""Activation caches researchers already have on disk, as a second source of activations for scoring SAEs.

`open_activations(path)` recognises the layout and returns a reader (`source.ActivationSource`) whose `info`
was checked when it was opened (widths, dtypes, token counts, metadata) and whose `batches()` streams the
activations. Layouts, one reader each:
- minSAE's cache (`minsae.py`): `shard_*.safetensors` + `metadata.json`, in PATH or PATH/validation;
- SAELens' `CacheActivationsRunner` dataset (`saelens.py`): a `save_to_disk` folder;
- a plain `.safetensors` or `.npy` file (`tensor_file.py`).
Scoring SAEs on a cache is `scoring.py`; fitting it into `saehealth eval` / `compare` is `plan.py`.
"""

from __future__ import annotations

from pathlib import Path

from saehealth.activations.minsae import MinSAECache, is_minsae_folder
from saehealth.activations.saelens import SAELensCache, is_saved_dataset
from saehealth.activations.source import ActivationBatch, ActivationSource, CacheInfo
from saehealth.activations.tensor_file import SUFFIXES, TensorFile
from saehealth.errors import DataError

__all__ = ["ActivationBatch", "ActivationSource", "CacheInfo", "open_activations"]


def open_activations(path: str | Path, hook: str | None = None) -> ActivationSource:
    """The reader for the activation cache at `path`; `hook` picks the activations where a cache holds several.

    Raises DataError, naming the problem, for a missing path, an unknown layout, an empty cache, mixed widths
    or dtypes, a missing metadata.json or a non-float dtype."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"--activations {path} does not exist: check the path.")
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(
                f"Cannot read activations from {path.name}: give a .safetensors or .npy file, a minSAE cache folder "
                "or a SAELens activation dataset folder."
            )
        return TensorFile(path, hook)
    if is_minsae_folder(path):
        return MinSAECache(path)
    if is_minsae_folder(path / "validation"):
        return MinSAECache(path / "validation")
    if is_saved_dataset(path):
        return SAELensCache(path, hook)
    raise DataError(
        f"{path} is no activation cache saehealth knows: expected minSAE's shard_*.safetensors with metadata.json "
        "(in it or in validation/), a SAELens activation dataset (save_to_disk), or a .safetensors/.npy file."
    )
