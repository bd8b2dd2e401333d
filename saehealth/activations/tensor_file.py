"""A plain tensor file of activations: `.safetensors` or `.npy`, shaped (tokens, d_in) or (sequences, pos, d_in).

A (sequences, positions, d_in) array keeps sequences apart; a (tokens, d_in) array is a flat stream, cut into
blocks of the context length. Both are read a batch at a time (safetensors slices, a memory-mapped .npy).
A safetensors file with several tensors must name the activations `activations` or after the hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from saehealth.activations.source import ActivationBatch, ActivationSource, CacheInfo, flat_batches, torch_dtype
from saehealth.errors import DataError

SUFFIXES = (".safetensors", ".npy")
PREFERRED_NAME = "activations"


class TensorFile(ActivationSource):
    """One .safetensors or .npy file; `hook` names the tensor when a safetensors file holds several."""

    def __init__(self, path: Path, hook: str | None = None):
        self.path = path
        if path.suffix == ".npy":
            shape, dtype = self._open_npy()
        elif path.suffix == ".safetensors":
            shape, dtype = self._open_safetensors(hook)
        else:
            raise DataError(
                f"Cannot read activations from {path.name}: give a .safetensors or .npy file, or a cache folder."
            )
        if len(shape) not in (2, 3):
            raise DataError(
                f"{path} holds activations of shape {tuple(shape)}: expected (tokens, d_in) or (sequences, positions, d_in)."
            )
        n_tokens = 1
        for size in shape[:-1]:
            n_tokens *= int(size)
        if n_tokens == 0 or shape[-1] == 0:
            raise DataError(f"{path} holds no activations (shape {tuple(shape)}): point at a filled file.")
        self.shape = tuple(int(s) for s in shape)
        self.info = CacheInfo(
            path=path,
            layout="tensor",
            description=f"{path.suffix} activation file",
            d_in=self.shape[-1],
            dtype=dtype,
            n_tokens=n_tokens,
            sequence_length=self.shape[1] if len(shape) == 3 else None,
            keeps_sequences=len(shape) == 3,
        )

    def _open_npy(self) -> tuple[tuple[int, ...], torch.dtype]:
        import numpy as np

        try:
            self.array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"Could not read {self.path} as a .npy array ({exc}): save it with numpy.save.") from exc
        return self.array.shape, torch_dtype(str(self.array.dtype), str(self.path))

    def _open_safetensors(self, hook: str | None) -> tuple[tuple[int, ...], torch.dtype]:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as f:
                names = list(f.keys())
                if not names:
                    raise DataError(f"{self.path} holds no tensors: point at a filled file.")
                if len(names) == 1:
                    self.name = names[0]
                elif PREFERRED_NAME in names or hook in names:
                    self.name = PREFERRED_NAME if PREFERRED_NAME in names else hook
                else:
                    raise DataError(
                        f"{self.path} holds {len(names)} tensors ({', '.join(names[:5])}): name the activations "
                        f"{PREFERRED_NAME!r} or after the hook (and pass --hook)."
                    )
                view = f.get_slice(self.name)
                shape, dtype = view.get_shape(), view.get_dtype()
        except DataError:
            raise
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise DataError(f"Could not read {self.path} ({exc}): is it a safetensors file?") from exc
        return tuple(shape), torch_dtype(dtype, str(self.path))

    def batches(self, batch_size: int, context: int) -> Iterator[ActivationBatch]:
        with self._reader() as read:
            if len(self.shape) == 3:
                for start in range(0, self.shape[0], batch_size):
                    yield ActivationBatch(read(start, min(start + batch_size, self.shape[0])), None, self.path.name)
            else:
                yield from flat_batches(read, self.shape[0], context, batch_size, self.path.name)

    def _reader(self):
        """A context manager giving read(start, stop) -> rows start..stop-1 as a tensor."""
        from contextlib import contextmanager

        @contextmanager
        def npy():
            yield lambda a, b: torch.from_numpy(self.array[a:b].copy())

        @contextmanager
        def safetensors():
            from safetensors import safe_open

            with safe_open(str(self.path), framework="pt") as f:
                view = f.get_slice(self.name)
                yield lambda a, b: view[a:b]

        return npy() if self.path.suffix == ".npy" else safetensors()
