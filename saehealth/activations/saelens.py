"""SAELens' activation cache: the Hugging Face dataset `CacheActivationsRunner` saves with `save_to_disk`.

One row per sequence: a column named after the hook (`blocks.0.hook_resid_post`) holding an Array2D of
(context_size, d_in) activations, and a `token_ids` column with the sequence's tokens (SAELens ≥ 6 writes it;
older caches may lack it). The hook's head dimensions, if any, are already flattened. The Arrow files are
memory-mapped, so reading a batch of rows reads just those rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from saehealth.activations.source import ActivationBatch, ActivationSource, CacheInfo, torch_dtype
from saehealth.errors import DataError

TOKEN_COLUMN = "token_ids"


def is_saved_dataset(path: Path) -> bool:
    """A `save_to_disk` folder (a Dataset or a DatasetDict)."""
    return path.is_dir() and (
        (path / "dataset_info.json").is_file()
        or (path / "state.json").is_file()
        or (path / "dataset_dict.json").is_file()
    )


class SAELensCache(ActivationSource):
    """A SAELens activation dataset; `hook` picks the column when the dataset holds several hooks."""

    def __init__(self, folder: Path, hook: str | None = None):
        import datasets

        if (folder / "dataset_dict.json").is_file():
            raise DataError(f"{folder} holds several splits (a DatasetDict): pass one split's folder as --activations.")
        try:
            dataset = datasets.load_from_disk(str(folder))
        except Exception as exc:  # datasets raises FileNotFoundError, ValueError or its own classes
            raise DataError(f"Could not read the dataset at {folder} ({exc}): is it a save_to_disk folder?") from exc
        columns = {name: feature for name, feature in dataset.features.items() if isinstance(feature, datasets.Array2D)}
        if not columns:
            raise DataError(
                f"{folder} has no activation column (an Array2D of (context, d_in); it has "
                f"{', '.join(dataset.column_names)}): is it a SAELens activation cache?"
            )
        if hook in columns:
            column = hook
        elif len(columns) == 1:
            column = next(iter(columns))
        else:
            raise DataError(
                f"{folder} holds activations of {len(columns)} hooks ({', '.join(columns)}): pass --hook to pick one."
            )
        feature = columns[column]
        context, width = feature.shape
        if len(dataset) == 0 or context == 0:
            raise DataError(f"{folder} holds no activations (0 rows): point at a filled cache.")
        self.dataset, self.column = dataset, column
        self.has_tokens = TOKEN_COLUMN in dataset.column_names
        self.info = CacheInfo(
            path=folder,
            layout="saelens",
            description="SAELens activation cache",
            d_in=int(width),
            dtype=torch_dtype(feature.dtype, f"{folder} column {column!r}"),
            n_tokens=len(dataset) * int(context),
            sequence_length=int(context),
            keeps_sequences=True,
            hook_name=column,
            has_token_ids=self.has_tokens,
        )

    def batches(self, batch_size: int, context: int) -> Iterator[ActivationBatch]:  # noqa: ARG002 (rows fix it)
        columns = [self.column, TOKEN_COLUMN] if self.has_tokens else [self.column]
        rows = self.dataset.with_format("torch", columns=columns)
        n = len(rows)
        for start in range(0, n, batch_size):
            batch = rows[start : start + batch_size]
            tokens = batch[TOKEN_COLUMN].long() if self.has_tokens else None
            yield ActivationBatch(batch[self.column], tokens, f"rows {start}–{min(start + batch_size, n) - 1}")
