"""Reading checkpoint files safely, and the checks every adapter shares.

Every reader turns a broken file into a one-line `CheckpointError` naming the file, the problem and the fix.
`.pt` files are only ever read with `torch.load(weights_only=True)`: a file that needs arbitrary unpickling
is refused with an explanation, never executed.
"""

from __future__ import annotations

import functools
import json
import os
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
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise CheckpointError(f"{path} cannot be read (permission denied): check its permissions.")
    return path


def natural_key(text: str) -> list:
    """Sort key that puts trainer_2 before trainer_10 and layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def read_json(path: Path, required: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON object from `path`; CheckpointError when it is unreadable, not an object or lacks `required` keys."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckpointError(f"{path} cannot be read ({exc.strerror}): check its permissions.") from None
    except UnicodeDecodeError as exc:
        raise CheckpointError(
            f"{path} is not UTF-8 text (byte {exc.start}): restore it from the training run or re-save it."
        ) from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path} is nested too deeply to be a config: restore the original file.") from None
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
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path} cannot be read (permission denied): check its permissions.")
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


def check_safetensors(path: Path) -> dict[str, str]:
    """{tensor name: dtype ('F32', 'I64', ...)} of a safetensors file, reading only its header (catches
    truncated, corrupt and unreadable files)."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint folder is incomplete; restore the weights file.")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"{path} cannot be read (permission denied): check its permissions.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}  # noqa: SIM118
    except Exception as exc:  # SafetensorError for a bad header or a file shorter than its header says
        raise CheckpointError(
            f"{path} is truncated or corrupt ({_first_line(exc)}): re-download or re-save the checkpoint."
        ) from None
    if not dtypes:
        raise CheckpointError(f"{path} holds no tensors: re-save the checkpoint.")
    not_float = {k: v for k, v in dtypes.items() if not v.startswith(("F", "BF"))}
    if not_float:
        name, dtype = next(iter(not_float.items()))
        raise CheckpointError(
            f"{path}: {name} holds {_SAFETENSORS_DTYPES.get(dtype, dtype)} values, not floating-point weights: "
            "an SAE's weights are float32, float16 or bfloat16; re-save the checkpoint from the trained model."
        )
    return dtypes


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


def require_float(state: Mapping[str, Any], source: Path | str) -> None:
    """CheckpointError when a tensor of an SAE's state holds integers or booleans instead of floats."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and not tensor.is_floating_point():
            raise CheckpointError(
                f"{source}: {name} holds {str(tensor.dtype).removeprefix('torch.')} values, not floating-point "
                "weights: an SAE's weights are float32, float16 or bfloat16; re-save the checkpoint."
            )


def state_dict_error(exc: RuntimeError, source: Path | str, what: str) -> IncompatibleSAEError:
    """torch's multi-line `load_state_dict` error as one line: which tensors are missing, unknown or misshapen."""
    text = str(exc)
    problems = []
    for kind, names in re.findall(r"(Missing|Unexpected) key\(s\) in state_dict: ([^\n]*)", text):
        names = ", ".join(re.findall(r'"([^"]+)"', names))
        problems.append(f"{names} {'missing' if kind == 'Missing' else 'not part of this architecture'}")
    for name, got, want in re.findall(
        r"size mismatch for ([\w.]+): copying a param with shape torch.Size\((\[[^\]]*\])\) from checkpoint, "
        r"the shape in current model is torch.Size\((\[[^\]]*\])\)",
        text,
    ):
        problems.append(f"{name} has shape {tuple(json.loads(got))}, expected {tuple(json.loads(want))}")
    detail = "; ".join(problems) or _first_line(exc)
    return IncompatibleSAEError(
        f"{source}: the weights do not fit {what} ({detail}): the weights file and its config disagree; "
        "restore the original files or pass --format to choose another format."
    )


# Field checks for checkpoint configs: (what the message says, test).
POSITIVE_INT = ("a whole number above 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)
INDEX = ("a whole number, 0 or more", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0)
TEXT = ("a string", lambda v: isinstance(v, str))


def check_fields(data: Mapping[str, Any], fields: Mapping[str, tuple], source: Path | str, required=()) -> None:
    """CheckpointError naming the first field of a config that is missing (when `required`) or of the wrong
    type; `fields` maps names to POSITIVE_INT, INDEX or TEXT (null is fine for optional ones)."""
    for name in required:
        if data.get(name) is None:
            raise CheckpointError(f"{source} lacks {name!r}: restore the original file or add it.")
    for name, (what, ok) in fields.items():
        value = data.get(name)
        if value is not None and not ok(value):
            raise CheckpointError(
                f"{source}: {name} is {json.dumps(value)[:40]}, expected {what}: restore the original file or fix it."
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


_SAFETENSORS_DTYPES = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _unsafe_global(message: str) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return f" (it stores a {match.group(1)} object)" if match else ""
