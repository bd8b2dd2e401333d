"""torchrun scale-out: which rank this process is, its device, its shard, and how ranks agree and combine.

Under `torchrun --nproc_per_node N -m saehealth eval ...` every rank runs the same command. Each loads the SAEs
and the model on its own device (`cuda:LOCAL_RANK`, or the CPU with the gloo backend), scores its own shard of the
evaluation's sequences (sequence i goes to rank i mod N: deterministic, and the same tokens as one process), and
the accumulators are merged on rank 0 (`merge_on_first_rank`), which alone finishes the results, writes and prints.

Ranks meet only at `step()` boundaries and the final merge. A rank that fails inside a step (a bad checkpoint on
one node, out of memory) still reaches the boundary with its error, and every rank then stops with it, so the job
ends with the one-line error and nothing written instead of hanging in a collective.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from saehealth.errors import SaeHealthError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def first(self) -> bool:
        return self.rank == 0


class RankFailed(SaeHealthError):
    """A rank of a torchrun job failed; every rank raises this (rank 0 names the failed rank and its message)."""


class OutOfMemory(SaeHealthError):
    """The device ran out of memory during the evaluation."""


def agreed(exc: BaseException) -> bool:
    """True for an error every rank of the job knows of (raised by `agree`): rank 0 reports it, the others can
    leave quietly (exit 0, so that torchrun does not stop rank 0 before it has said what went wrong)."""
    return getattr(exc, "agreed_by_ranks", False)


def ranks() -> Ranks:
    """This process's place in a torchrun job (rank 0 of 1 outside one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def active() -> bool:
    """True inside a torchrun job of more than one process (the process group is set up on first use)."""
    return ranks().world_size > 1


def setup(device: str) -> None:
    """Join the job's process group (once): NCCL for CUDA devices, gloo otherwise."""
    import torch.distributed as dist

    if not active() or dist.is_initialized():
        return
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")


def agree(error: BaseException | None = None) -> None:
    """Every rank calls this at the same point: if any rank failed, every rank raises. Rank 0 raises its own error,
    or `RankFailed` naming the first rank that failed; the other ranks raise `RankFailed` (rank 0 reports)."""
    if not active():
        if error is not None:
            raise error
        return
    import torch.distributed as dist

    here = ranks()
    reports: list[Any] = [None] * here.world_size
    dist.all_gather_object(reports, None if error is None else str(error))
    failed = [(rank, message) for rank, message in enumerate(reports) if message is not None]
    if not failed:
        return
    if here.first and error is not None:
        error.agreed_by_ranks = True
        raise error
    rank, message = failed[0]
    failure = RankFailed(f"rank {rank} failed: {message}")
    failure.agreed_by_ranks = True
    raise failure from error


@contextmanager
def step() -> Iterator[None]:
    """A stretch of work every rank does on its own; ranks agree at its end that none of them failed. Running out
    of device memory becomes a one-line error naming the fix."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001  (reported to every rank, then re-raised)
        agree(_out_of_memory(exc) or exc)
    else:
        agree()


def _out_of_memory(exc: Exception) -> OutOfMemory | None:
    if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
        error = OutOfMemory(f"Out of memory ({str(exc).splitlines()[0][:120]}): lower --batch-size.")
        error.__cause__ = exc
        return error
    return None


def merge_on_first_rank(tallies: list[T]) -> list[T] | None:
    """Combine every rank's accumulators (objects with an exact `merge`) on rank 0, in rank order.

    Returns the merged list on rank 0 and None on the others; outside torchrun, the list itself."""
    if not active():
        return tallies
    import torch.distributed as dist

    here = ranks()
    gathered: list[Any] | None = [None] * here.world_size if here.first else None
    dist.gather_object(_to_cpu(tallies), gathered, dst=0)
    if not here.first:
        return None
    merged = gathered[0]
    for other in gathered[1:]:
        for mine, theirs in zip(merged, other, strict=True):
            mine.merge(theirs)
    return merged


def finish() -> None:
    """Leave the process group (at the end of a command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _to_cpu(obj):
    """A deep copy with every tensor on the CPU, so that rank 0 can unpickle what other GPUs and nodes send."""
    moved = copy.copy(obj)
    if isinstance(obj, list):
        return [_to_cpu(item) for item in obj]
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if hasattr(obj, "__dict__"):
        for name, value in vars(obj).items():
            setattr(moved, name, _to_cpu(value))
    return moved


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank (a decision only rank 0 can make, such as reusing a saved result)."""
    if not active():
        return value
    import torch.distributed as dist

    holder = [value if ranks().first else None]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
