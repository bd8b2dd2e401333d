"""Text datasets by name: the built-in corpus, a local file or folder, or a Hugging Face hub dataset.

Every dataset comes back as a `datasets.Dataset` with a `text` column or a pre-tokenized `tokens`
(or `input_ids`) column, which is what SAELens' activation store and saehealth's evaluation read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from saehealth import builtin
from saehealth.errors import DataError

TEXT_COLUMNS = ("text",)
TOKEN_COLUMNS = ("tokens", "input_ids")
LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".txt": "text"}


def load_dataset(name: str, split: str = "train"):
    """A `datasets.Dataset` for the built-in corpus, a local path or a hub name (that split)."""
    if name == builtin.BUILTIN_DATASET:
        dataset = _builtin(split)
    elif Path(name).expanduser().exists():
        dataset = _local(Path(name).expanduser(), split)
    elif _looks_like_path(name):
        raise DataError(f"Dataset path {name} does not exist: check the path, or give a hub dataset name.")
    else:
        dataset = _hub(name, split)
    _check_columns(dataset, name)
    if len(dataset) == 0:
        raise DataError(f"Dataset {name!r} (split {split!r}) is empty: give a dataset with at least one row.")
    _check_values(dataset, name)
    return dataset


def text_column(dataset) -> str | None:
    """The dataset's text column, or None when it is pre-tokenized."""
    return next((c for c in TEXT_COLUMNS if c in dataset.column_names), None)


def token_column(dataset) -> str | None:
    """The dataset's token column, or None when it holds text."""
    return next((c for c in TOKEN_COLUMNS if c in dataset.column_names), None)


def _builtin(split: str):
    from datasets import Dataset

    if split not in builtin.BUILTIN_SPLITS:
        raise DataError(f"The built-in corpus has no split {split!r}: use one of {', '.join(builtin.BUILTIN_SPLITS)}.")
    docs = [d for d in builtin.read_corpus() if d["split"] == split]
    return Dataset.from_dict({"text": [d["text"] for d in docs], "id": [d["id"] for d in docs]})


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).suffix in LOCAL_FORMATS


def _local(path: Path, split: str):
    import datasets

    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise DataError(f"Dataset {path} cannot be read (permission denied): check its permissions.")
    try:
        if path.is_dir():
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{path} has no split {split!r}: it has {', '.join(loaded)}.")
                return loaded[split]
            return loaded
        if path.suffix not in LOCAL_FORMATS:
            raise DataError(
                f"Cannot read {path.name}: give a .parquet, .jsonl, .json or .txt file, or a save_to_disk folder."
            )
        # Local files are one split; `split` names the hub split only. Their progress bars are noise, and
        # datasets logs a multi-line report of a file it cannot parse before raising: the error says it once.
        datasets.disable_progress_bars()
        datasets_logger = logging.getLogger("datasets")
        level, datasets_logger.level = datasets_logger.level, logging.CRITICAL
        try:
            return datasets.load_dataset(LOCAL_FORMATS[path.suffix], data_files=str(path), split="train")
        finally:
            datasets_logger.setLevel(level)
            datasets.enable_progress_bars()
    except DataError:
        raise
    except Exception as exc:  # OSError, ValueError, ArrowInvalid, datasets' own wrappers of parse errors
        cause = exc.__cause__ or exc.__context__ or exc  # datasets wraps the parser's error: show that one
        what = f"a valid {path.suffix} file" if path.is_file() else "a folder written by Dataset.save_to_disk"
        raise DataError(f"Could not read dataset {path} ({_first_line(cause)}): check that it is {what}.") from exc


def _hub(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown repo, unknown split: all surface as different classes
        raise DataError(
            f"Could not load dataset {name!r} split {split!r} from the Hugging Face hub ({type(exc).__name__}). "
            f"Use {builtin.BUILTIN_DATASET!r}, a local .parquet/.jsonl/.txt file or folder, or check network access."
        ) from exc


def _check_columns(dataset, name: str) -> None:
    if text_column(dataset) is None and token_column(dataset) is None:
        raise DataError(
            f"Dataset {name!r} has no text or tokens column (it has {', '.join(dataset.column_names)}): "
            "rename the column holding the text to 'text', or tokens to 'tokens'."
        )


def _check_values(dataset, name: str) -> None:
    """DataError for a text column that is not text or has nulls, or a token column that is not lists of whole
    numbers 0 or more; from the Arrow schema and null counts, so it costs nothing before the pass."""
    import pyarrow as pa

    text, tokens = text_column(dataset), token_column(dataset)
    column = dataset.data.column(text or tokens)
    if text is not None:
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise DataError(
                f"Dataset {name!r}: column {text!r} holds {column.type} values, not text: put the documents' text "
                "there as strings (or token ids in a 'tokens' column)."
            )
        if column.null_count:
            raise DataError(
                f"Dataset {name!r}: {column.null_count} of {len(column)} rows have no text (null in column {text!r}): "
                "remove those rows or give them text."
            )
        return
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not pa.types.is_integer(kind.value_type):
        raise DataError(
            f"Dataset {name!r}: column {tokens!r} holds {kind} values, not lists of token ids (whole numbers): "
            "store each row's token ids as a list of integers."
        )
    import pyarrow.compute as pc

    ids = pc.list_flatten(column)
    low = pc.min(ids).as_py() if len(ids) else None
    if column.null_count or ids.null_count or (low is not None and low < 0):
        bad = "null" if column.null_count or ids.null_count else f"negative ({low})"
        raise DataError(
            f"Dataset {name!r}: column {tokens!r} holds {bad} token ids: token ids are whole numbers from 0 to the "
            "vocabulary size - 1; re-tokenize the data."
        )


def check_token_ids(tokens, vocabulary_size: int, name: str = "the dataset") -> None:
    """DataError when a batch of token ids holds one the tokenizer's vocabulary lacks (before the model sees it)."""
    high = int(tokens.max()) if tokens.numel() else 0
    if high >= vocabulary_size:
        raise DataError(
            f"Token id {high} in {name} is beyond the model's vocabulary ({vocabulary_size} tokens): the data was "
            "tokenized for another model; re-tokenize it with this model's tokenizer or pass the matching --model."
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def sequence_batches(
    dataset,
    tokenizer,
    context_length: int,
    n_sequences: int,
    batch_size: int,
    seed: int,
    shard: tuple[int, int] = (0, 1),
    prepend_bos: bool = True,
):
    """Yield (batch, context_length) LongTensors of evaluation sequences, `n_sequences` at most.

    Text rows are shuffled with `seed`, tokenized one at a time and joined into one stream, as SAELens'
    activation store does: every sequence starts with BOS when `prepend_bos` (the SAE's `prepend_bos`), and a
    BOS separates two documents inside a sequence (never at its start, so no sequence begins with two BOS).
    Pre-tokenized rows are cut into `context_length` pieces as they are. Streaming keeps memory
    independent of how many tokens are evaluated. `shard=(rank, world_size)` keeps the sequences whose index
    i (in that order) has i mod world_size == rank: a torchrun rank's share, the same tokens as one process.
    """
    import torch

    rows = dataset.shuffle(seed=seed)
    text_col, tok_col = text_column(rows), token_column(rows)
    bos = tokenizer.bos_token_id
    head = [bos] if bos is not None and prepend_bos else []
    separator = [bos] if bos is not None else []  # SAELens' default sequence separator
    batch: list[list[int]] = []

    def sequences():
        if tok_col is not None:
            for row in rows:
                ids = list(row[tok_col])
                for start in range(0, len(ids) - context_length + 1, context_length):
                    yield ids[start : start + context_length]
            return
        buffer: list[int] = []
        body = context_length - len(head)
        for row in rows:
            # A document that starts a sequence follows its BOS directly; one that starts mid-sequence follows a
            # separator.
            ids = tokenizer.encode(row[text_col], add_special_tokens=False)
            if ids:  # an empty document adds nothing, not even a separator
                buffer += (separator if buffer else []) + ids
            while len(buffer) >= body:
                yield head + buffer[:body]
                buffer = buffer[body:]

    def checked(batch: list[list[int]]):
        tokens = torch.tensor(batch, dtype=torch.long)
        if tok_col is not None:
            check_token_ids(tokens, len(tokenizer))
        return tokens

    rank, world_size = shard
    try:
        for index, seq in enumerate(sequences()):
            if index >= n_sequences:
                break
            if index % world_size != rank:
                continue
            batch.append(seq)
            if len(batch) == batch_size:
                yield checked(batch)
                batch = []
    except UnicodeDecodeError as exc:  # Arrow keeps undecodable bytes until a row is read
        raise DataError(
            f"The dataset holds text that is not valid UTF-8 ({_first_line(exc)}): re-save it as UTF-8."
        ) from None
    if batch:
        yield checked(batch)


def special_token_mask(tokens, tokenizer, include_special_tokens: bool = False):
    """True where a position counts: not the tokenizer's BOS, EOS or PAD (unless `include_special_tokens`)."""
    import torch

    if include_special_tokens:
        return torch.ones_like(tokens, dtype=torch.bool)
    special = {t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if t is not None}
    if not special:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.tensor(sorted(special), device=tokens.device))
