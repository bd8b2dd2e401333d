"""How the SAEs of a comparison or a run folder are found and named: the checkpoints a command line and its sweep
globs name, and each SAE's result folder name inside the comparison folder (short, unique, folder-safe)."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from saehealth.errors import ConfigError
from saehealth.loading.files import natural_key

# Checkpoint file names that say nothing about the SAE: such an SAE is named after its folder.
_GENERIC_STEMS = {"ae", "params", "sae", "sae_weights", "best_sae", "final_sae", "final", "model", "checkpoint"}
# Member folders of a multi-SAE run (sparsify hookpoints, dictionary_learning trainers): named with their run.
_COMPARISON_FILE_SUFFIXES = (".md", ".json", ".html", ".png")
_MEMBER_NAME = re.compile(r"^(trainer_\d+|layers?[._]\d+.*|h\.\d+.*|blocks?[._]\d+.*)$")


def checkpoint_paths(paths, sweeps) -> list[str]:
    """The paths, then every match of each sweep glob (natural order), without repeats."""
    found: list[str] = list(paths)
    for pattern in sweeps:
        matches = sorted(glob.glob(os.path.expanduser(pattern)), key=natural_key)
        if not matches:
            raise ConfigError(
                f"--sweep {pattern!r} matches no file or folder: check the pattern (quote it so the shell leaves it)."
            )
        found += matches
    unique: dict[Path, str] = {}
    for path in found:
        unique.setdefault(Path(path).expanduser().resolve(), path)
    return list(unique.values())


def unique_names(paths: list[str]) -> list[str]:
    """Short folder-safe names for checkpoints: the folder (or informative file) name, its run folder's name
    in front for members of a run ('sweep-trainer_0', 'run-layers.3'), and as many parent folders prepended as
    it takes to tell equal names apart."""
    parts = []
    for path in paths:
        p = Path(path).expanduser().resolve()
        if p.is_file() or p.suffix in (".pt", ".npz", ".safetensors"):
            p = p.parent if p.stem in _GENERIC_STEMS else p.with_suffix("")
        parts.append([safe_name(part) for part in p.parts if part not in ("/", "\\")] or ["sae"])
    depth = [2 if len(part) > 1 and _MEMBER_NAME.match(part[-1]) else 1 for part in parts]
    while True:
        names = ["-".join(part[-d:]) for part, d in zip(parts, depth, strict=True)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    seen: dict[str, int] = {}
    for i, name in enumerate(names):  # identical paths down to the root cannot happen; numbered to be safe
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name}-{seen[name]}"
    return names


def member_names(paths: list[str]) -> list[str]:
    """Names of the members of one run folder: each member's own folder name where those are distinct."""
    names = [safe_name(Path(path).name) for path in paths]
    return names if len(set(names)) == len(names) else unique_names(paths)


def safe_name(part: str) -> str:
    """A checkpoint's path part as a result folder's name inside the comparison folder: letters, digits and
    `._-` only, never hidden (`.saehealth.json`, `..`, a staging folder's name) and never the name of a file the
    comparison writes beside its result folders (comparison.md, run.json, plots' .png)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", part).strip("_").lstrip(".") or "sae"
    return f"{name}-sae" if name.lower().endswith(_COMPARISON_FILE_SUFFIXES) else name
