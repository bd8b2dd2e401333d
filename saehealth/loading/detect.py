"""Which adapter a path belongs to, and picking SAEs out of folders that hold several."""

from __future__ import annotations

from fnmatch import fnmatchcase
from glob import has_magic
from pathlib import Path

from saehealth.errors import CheckpointError
from saehealth.loading.base import Adapter, LoadRequest, adapters_in_detection_order
from saehealth.loading.files import load_torch_file

# Files that stand for the folder they sit in: pointing at one means "load this folder".
FOLDER_FILES = {"cfg.json", "sae_weights.safetensors", "sae.safetensors", "hyperparams.json", "runner_cfg.json"}


def resolve(path: Path) -> Path:
    """The checkpoint a path stands for: a folder's marker file (cfg.json, ...) means the folder."""
    if path.is_file() and path.name in FOLDER_FILES:
        return path.parent
    if path.is_file() and path.parent.name == "checkpoints" and (path.parent.parent / "hyperparams.json").is_file():
        return path.parent.parent  # Llama Scope keeps its weights in checkpoints/ below hyperparams.json
    return path


def find_adapter(path: Path) -> Adapter:
    """The first registered adapter that recognises `path`; CheckpointError listing what was expected."""
    adapters = adapters_in_detection_order()
    for adapter in adapters:
        if adapter.detect(path):
            return adapter
    expected = "; ".join(a.expected for a in adapters if a.name != "sae_lens_pretrained")
    if path.is_file() and path.suffix in (".pt", ".pth", ".bin"):
        load_torch_file(path, mmap=True)  # an unsafe or corrupt file is reported as such, not as "unknown"
    if path.is_dir():
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
        shown = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "") if found else "nothing"
        where = f"{path} holds no checkpoint saehealth recognises (found: {shown})"
    else:
        where = f"{path} is not a checkpoint file saehealth recognises"
    raise CheckpointError(f"{where}. Expected one of: {expected}. Pass --format to force one.")


def select_members(
    names: list[str], hooks: dict[str, str | None], request: LoadRequest, path: Path
) -> tuple[list[str], bool]:
    """The member SAEs of a multi-SAE folder chosen by `select` (a glob) or `hook`, and whether to return one.

    `names` are the members (e.g. sparsify hookpoints), `hooks` their TransformerLens hooks. A glob returns a
    list; an exact name (or a hook) that matches one member returns that SAE alone.
    """
    available = ", ".join(names)
    if request.select:
        chosen = [n for n in names if fnmatchcase(n, request.select)]
        if not chosen:
            raise CheckpointError(f"No SAE in {path} matches {request.select!r}: available are {available}.")
        return chosen, not has_magic(request.select) and len(chosen) == 1
    if request.hook:
        chosen = [n for n in names if request.hook in (n, hooks.get(n))]
        if not chosen:
            raise CheckpointError(
                f"No SAE in {path} reads hook {request.hook!r}: available are {available} "
                "(select one with select=NAME or a glob)."
            )
        return chosen, len(chosen) == 1
    return list(names), False
