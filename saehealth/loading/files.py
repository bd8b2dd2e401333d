"""Reading checkpoint files safely, and the checks every adapter shares.

Every reader turns a broken file into a one-line `CheckpointError` naming the file, the problem and the fix.
`.pt` files are only ever read with `torch.load(weights_only=True)`: a file that needs arbitrary unpickling
is refused with an explanation, never executed.
"""

from __future__ import annotations

import functools
import json
import pickle
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from saehealth.errors import CheckpointError, ConfigError, IncompatibleSAEError, suggest

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def parse_dtype(dtype: str | torch.dtype) -> str:
    """The canonical dtype name ('float32', ...) for a name or a torch dtype; ConfigError for anything else."""
    if isinstance(dtype, torch.dtype):
        for name, value in DTYPES.items():
            if value == dtype:
                return name
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise ConfigError(f"Unknown dtype {dtype!r}: choose from {', '.join(DTYPES)}.{suggest(name, DTYPES)}")
    return name


def require_path(path: str | Path) -> Path:
    """`path` as a Path, or a CheckpointError when nothing is there."""
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} does not exist: check the path to the checkpoint file or folder.")
    return path


def natural_key(text: str) -> list:
    """Sort key that puts trainer_2 before trainer_10 and layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def read_json(path: Path, required: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON object from `path`; CheckpointError when it is unreadable, not an object or lacks `required` keys."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror}): check its permissions.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}): restore it from the training run or re-save it."
        ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object: restore the original file.")
    missing = [key for key in required if key not in data]
    if missing:
        raise CheckpointError(
            f"{path} lacks required field(s) {', '.join(repr(k) for k in missing)}: "
            "restore the original file or add them."
        )
    return data


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; CheckpointError when it is truncated or corrupt."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint folder is incomplete; restore the weights file.")
    try:
        tensors = {}
        with safe_open(str(path), framework="pt", device=device) as f:
            for key in f.keys():  # noqa: SIM118  (safe_open objects are not iterable)
                tensors[key] = f.get_tensor(key)
    except Exception as exc:  # safetensors raises SafetensorError, OSError or struct errors for broken files
        raise CheckpointError(
            f"{path} is truncated or corrupt ({_first_line(exc)}): re-download or re-save the checkpoint."
        ) from None
    if not tensors:
        raise CheckpointError(f"{path} holds no tensors: re-save the checkpoint.")
    return tensors


def check_safetensors(path: Path) -> list[str]:
    """The tensor names of a safetensors file, reading only its header (catches truncated and corrupt files)."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint folder is incomplete; restore the weights file.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            keys = list(f.keys())
    except Exception as exc:  # SafetensorError for a bad header or a file shorter than its header says
        raise CheckpointError(
            f"{path} is truncated or corrupt ({_first_line(exc)}): re-download or re-save the checkpoint."
        ) from None
    if not keys:
        raise CheckpointError(f"{path} holds no tensors: re-save the checkpoint.")
    return keys


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    """All arrays of an .npz file as tensors (no pickled objects allowed)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise CheckpointError(
                f"{path} stores pickled objects, which could run code when read: saehealth refuses it; "
                "save plain arrays with numpy.savez."
            ) from None
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(exc)}): re-download it.") from None
    except Exception as exc:  # zipfile.BadZipFile, EOFError, OSError
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(exc)}): re-download it.") from None


def load_torch_file(path: Path, mmap: bool = False) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with clear errors.

    A file that needs arbitrary unpickling (a pickled module, optimizer class or custom object) is refused:
    unpickling runs code, and a checkpoint should be plain tensors and containers.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        what = _unsafe_global(str(exc))
        raise CheckpointError(
            f"{path} needs arbitrary unpickling{what}, which could run code: saehealth refuses to load it. "
            "Re-save plain tensors, e.g. torch.save(model.state_dict(), path)."
        ) from None
    except RuntimeError as exc:
        if mmap and "mmap" in str(exc):
            return load_torch_file(path, mmap=False)  # legacy (non-zip) files cannot be memory-mapped
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(exc)}): re-save the checkpoint.") from None
    except (EOFError, ValueError, OSError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({_first_line(exc)}): re-save the checkpoint.") from None


@functools.lru_cache(maxsize=8)
def _peek(path: str, mtime_ns: int, size: int) -> Any:
    return load_torch_file(Path(path), mmap=True)


def peek_torch_file(path: Path) -> Any:
    """The content of a .pt file (memory-mapped, cached) for format detection; None when it cannot be read.

    Detection must not raise, so unreadable or unsafe files give None here; `load` reports them properly.
    """
    try:
        stat = path.stat()
        return _peek(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except (CheckpointError, OSError):
        return None


def require_tensors(state: Mapping[str, Any], keys: Iterable[str], source: Path | str) -> None:
    """CheckpointError naming the missing tensors (and the ones that are there)."""
    missing = [k for k in keys if not isinstance(state.get(k), torch.Tensor)]
    if missing:
        found = ", ".join(k for k, v in state.items() if isinstance(v, torch.Tensor)) or "none"
        raise CheckpointError(
            f"{source} lacks tensor(s) {', '.join(missing)} (found: {found}): it is not a complete checkpoint "
            "of this format; pass --format to choose another."
        )


def check_finite(state: Mapping[str, torch.Tensor], source: Path | str) -> None:
    """CheckpointError when any floating-point tensor holds NaN or Inf."""
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        finite = torch.isfinite(tensor)
        if bool(finite.all()):
            continue
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise CheckpointError(
            f"{source}: {name} holds {n_nan} NaN and {n_inf} Inf values: the weights are unusable "
            "(training diverged or the file is damaged); use an earlier checkpoint."
        )


def orient(
    tensor: torch.Tensor, rows: int, cols: int, name: str, notes: list[str], square_layout: str = "as stored"
) -> torch.Tensor:
    """`tensor` as a (rows, cols) matrix, transposing when it is stored (cols, rows).

    Orientation comes from the shapes, never from the tensor's name. A square matrix (rows == cols) cannot be
    told apart, so the library's documented layout is trusted and a note says so.
    """
    if tensor.ndim != 2:
        raise IncompatibleSAEError(f"{name} has shape {tuple(tensor.shape)}, expected a matrix of ({rows}, {cols}).")
    shape = tuple(tensor.shape)
    if shape == (rows, cols):
        if rows == cols:
            notes.append(
                f"{name} is square ({rows}x{cols}): orientation taken from the library's layout ({square_layout})."
            )
        return tensor
    if shape == (cols, rows):
        notes.append(f"{name} transposed from {shape}")
        return tensor.T.contiguous()
    raise IncompatibleSAEError(
        f"{name} has shape {shape}, which fits neither ({rows}, {cols}) nor ({cols}, {rows}): "
        "the checkpoint's tensors disagree about d_in and d_sae."
    )


def vector(tensor: torch.Tensor, length: int, name: str) -> torch.Tensor:
    """`tensor` as a 1-D vector of `length` (a scalar is broadcast); IncompatibleSAEError otherwise."""
    if tensor.ndim == 0:
        return tensor.expand(length).clone()
    flat = tensor.reshape(-1)
    if flat.numel() != length:
        raise IncompatibleSAEError(f"{name} has {flat.numel()} values, expected {length}.")
    return flat


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _unsafe_global(message: str) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return f" (it stores a {match.group(1)} object)" if match else ""
