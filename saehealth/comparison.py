"""Several results side by side: what `saehealth compare` and an eval of a run folder return, and its summary.

A `Comparison` holds one entry per SAE (its name, checkpoint and result) and the settings they share. Its `view`
says how it is shown: `comparison` (SAEs of a sweep or of several libraries: the L0 frontier matters) or `run`
(one SAE per hook of a model, from a run folder: ordered by layer, metrics plotted against layer) or `trajectory`
(the checkpoints of one training run, at one hook: ordered by training tokens, metrics plotted against them). The reports
of either live in `report/compare_report.py`; the JSON summary is `comparison_to_dict`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from saehealth.result import EvalResult

COMPARISON_SCHEMA_VERSION = 1
VIEWS = ("comparison", "run", "trajectory")
# The JSON summary of each view (its markdown report is named in report/compare_report.py).
SUMMARY_JSON = {"comparison": "comparison.json", "run": "run.json", "trajectory": "trajectory.json"}
# A SAELens training checkpoint's folder: named after the training tokens it had seen (`final_<n>` at the end).
_CHECKPOINT_NAME = re.compile(r"^(?:final_)?(\d+)$")
# The columns of every comparison view (table, markdown, JSON), in order.
SUMMARY_KEYS = (
    "l0",
    "loss_recovered",
    "delta_ce",
    "kl_div_score",
    "explained_variance",
    "dead_fraction",
    "absorption_fraction",
)
# A run report's table adds these (dense latents matter when every layer is read at once).
RUN_EXTRA_KEYS = ("dense_fraction",)
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


@dataclass
class ComparedSAE:
    """One SAE of a comparison: its name (= its result folder's name), checkpoint and result."""

    name: str
    path: str
    result: EvalResult
    folder: Path
    reused: bool = False


@dataclass
class Comparison:
    """The outcome of `compare` (or of an eval of a run folder): one entry per SAE and the shared settings."""

    entries: list[ComparedSAE]
    settings: dict
    out: Path
    notes: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # the markdown report, the JSON summary, plots
    view: str = "comparison"
    # Every SAE against the reference, with paired standard errors (comparison_differences.paired_differences);
    # None for a run view or a single SAE.
    differences: dict | None = None
    # CE, KL and loss recovered with every SAE spliced in at once (--replace-all; replace_all.py), else None.
    replace_all: dict | None = None

    @property
    def identical_tokens(self) -> bool:
        """True when every result was computed on the same tokens (always, unless an old result was reused)."""
        keys = {_token_key(entry.result) for entry in self.entries}
        return len(keys) == 1

    @property
    def hooks(self) -> list[str]:
        return list(dict.fromkeys(entry.result.sae.where for entry in self.entries))

    @property
    def summary_keys(self) -> tuple[str, ...]:
        return SUMMARY_KEYS + RUN_EXTRA_KEYS if self.view in ("run", "trajectory") else SUMMARY_KEYS


def training_tokens(name: str) -> int | None:
    """The training tokens a SAELens checkpoint folder's name records ('4096', 'final_8192'), else None."""
    match = _CHECKPOINT_NAME.match(Path(name).name)
    return int(match.group(1)) if match else None


def is_trajectory(names: list[str], hooks: list[str | None]) -> bool:
    """Several checkpoints of one training run: every name a token count, one hook for all."""
    return len(names) > 1 and all(training_tokens(n) is not None for n in names) and len(set(hooks)) == 1


def by_training_tokens(entries: list[ComparedSAE]) -> list[ComparedSAE]:
    """Entries ordered by the training tokens of their checkpoint (unnamed ones last)."""
    return sorted(entries, key=lambda e: (training_tokens(e.name) is None, training_tokens(e.name) or 0))


def layer_and_kind(result: EvalResult) -> tuple[int | None, str]:
    """(layer, hook type) of the hook an SAE is spliced at: (6, 'hook_resid_post'); (None, name) outside blocks.
    Transcoders are placed at their output hook, with the input named in the type."""
    hook = result.sae.output_hook_name or result.sae.hook_name
    match = _BLOCK.match(hook)
    layer, kind = (int(match.group(1)), match.group(2)) if match else (None, hook)
    if result.sae.output_hook_name and result.sae.output_hook_name != result.sae.hook_name:
        source = _BLOCK.match(result.sae.hook_name)
        kind = f"{source.group(2) if source else result.sae.hook_name} → {kind}"
    if result.sae.hook_head_index is not None:
        kind += f" (head {result.sae.hook_head_index})"
    return layer, kind


# Where a hook sits inside a TransformerLens block, first to last: the residual stream entering the block, the
# attention sublayer, the residual between the sublayers, the MLP, the residual leaving the block. Matched by
# the hook name's start, first match wins (so 'hook_attn_out' is not taken for 'attn.').
_BLOCK_DEPTH = (
    ("hook_resid_pre",),
    ("ln1.",),
    ("hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in"),
    ("attn.hook_q", "attn.hook_k", "attn.hook_v"),
    ("attn.hook_rot",),
    ("attn.hook_attn_scores", "attn.hook_pattern"),
    ("attn.hook_z", "attn.hook_result", "attn."),
    ("hook_attn_out",),
    ("hook_resid_mid",),
    ("ln2.",),
    ("hook_mlp_in",),
    ("mlp.hook_pre",),
    ("mlp.hook_post", "mlp."),
    ("hook_mlp_out",),
    ("hook_resid_post",),
)
# Outside the blocks: the embeddings come before block 0, the final norm and unembedding after the last block.
_AFTER_BLOCKS = ("ln_final.", "unembed.", "hook_unembed")


def hook_depth(hook: str) -> tuple[float, int, str]:
    """Sort key placing a hook by depth in the model: (layer, position inside the block, name). Hooks outside
    the blocks come before block 0 (embeddings) or after every block (final norm, unembedding); a hook type this
    table does not know goes after the known ones of its block, by name."""
    match = _BLOCK.match(hook)
    if match is None:
        return (math.inf if hook.startswith(_AFTER_BLOCKS) else -1.0, 0, hook)
    layer, inside = int(match.group(1)), match.group(2)
    position = next((i for i, starts in enumerate(_BLOCK_DEPTH) if inside.startswith(starts)), len(_BLOCK_DEPTH))
    return (float(layer), position, inside)


def depth_key(result: EvalResult) -> tuple:
    """Sort key of an SAE by where it is spliced (a transcoder at its output hook; heads by index)."""
    return (*hook_depth(result.sae.output_hook_name or result.sae.hook_name), result.sae.hook_head_index or -1)


def by_layer(entries: list[ComparedSAE]) -> list[ComparedSAE]:
    """Entries in depth order (hook_depth), SAEs at one hook by name, numbers compared as numbers
    (checkpoint 2000 before 10000): the one order of every run report (terminal, markdown, HTML, JSON)."""
    return sorted(entries, key=lambda e: (depth_key(e.result), natural_key(e.name)))


def by_hook(entries: list[ComparedSAE]) -> list[tuple[str, list[ComparedSAE]]]:
    """The entries grouped by the hook they are spliced at, [(hook, members)], hooks in depth order and members
    by name (`by_layer`). One SAE per hook is a run across the model (plotted against layer); a hook with several
    is a sweep or a training run's checkpoints at one place (one point per SAE; rivals on an L0 frontier)."""
    groups: dict[str, list[ComparedSAE]] = {}
    for entry in by_layer(entries):
        groups.setdefault(entry.result.sae.where, []).append(entry)
    return list(groups.items())


def shares_a_hook(entries: list[ComparedSAE]) -> bool:
    """True when some hook holds more than one of the entries."""
    return any(len(members) > 1 for _, members in by_hook(entries))


def short_hook(hook: str) -> str:
    """'blocks.0.hook_resid_post' -> '0.resid_post': narrow tables and plot legends need no more."""
    return hook.removeprefix("blocks.").replace("hook_", "")


def natural_key(name: str) -> tuple:
    """'ckpt_10000' after 'ckpt_2000': digit runs compare as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


def healthy_count(result: EvalResult) -> tuple[int, int]:
    """(healthy, total) over the headline verdicts."""
    from saehealth.thresholds import HEALTHY
    from saehealth.verdicts import verdicts_of

    headline = [v for v in verdicts_of(result).values() if v.get("headline")]
    return sum(v["status"] == HEALTHY for v in headline), len(headline)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both counts (lower x and higher y), sorted by x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox <= x and oy >= y) and (ox < x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def frontier_names(comparison: Comparison, y_key: str = "loss_recovered") -> list[str]:
    """Names of the SAEs on the L0 vs `y_key` frontier of their hook (SAEs at different hooks are not rivals),
    among those with both metrics measured; by hook, then by L0."""
    names = []
    for group in frontier_groups(comparison, y_key).values():
        names += [group[i][0] for i in pareto_front([point for _, point in group])]
    return names


def frontier_groups(comparison: Comparison, y_key: str) -> dict[str, list[tuple[str, tuple[float, float]]]]:
    """hook -> [(name, (L0, y))] over the SAEs with both metrics measured, in comparison order. In a run, only
    hooks holding several SAEs (a sweep or checkpoints at one place): an SAE alone at its hook has no rival."""
    groups: dict[str, list[tuple[str, tuple[float, float]]]] = {}
    for e in comparison.entries:
        x, y = e.result.metrics.get("l0"), e.result.metrics.get(y_key)
        if x is not None and y is not None:
            groups.setdefault(e.result.sae.where, []).append((e.name, (float(x), float(y))))
    if comparison.view == "run":
        shared = {hook for hook, members in by_hook(comparison.entries) if len(members) > 1}
        groups = {hook: group for hook, group in groups.items() if hook in shared}
    return groups


def comparison_to_dict(comparison: Comparison) -> dict:
    """The JSON summary: shared settings, one row per SAE (headline metrics, statuses, where its result is)."""
    from saehealth.verdicts import verdicts_of

    on_front = set(frontier_names(comparison))
    keys = comparison.summary_keys
    saes = []
    for entry in comparison.entries:
        r = entry.result
        verdicts = verdicts_of(r)
        healthy, total = healthy_count(r)
        layer, kind = layer_and_kind(r)
        saes.append(
            {
                "name": entry.name,
                "path": entry.path,
                "result": os.path.relpath(entry.folder / "result.json", comparison.out),
                "report": os.path.relpath(entry.folder / "report.md", comparison.out),
                "library": r.sae.source_library,
                "architecture": r.sae.architecture,
                "hook": r.sae.hook_name,
                "output_hook": r.sae.output_hook_name,
                "hook_head_index": r.sae.hook_head_index,
                "layer": layer,
                "hook_type": kind,
                "d_in": r.sae.d_in,
                "d_sae": r.sae.d_sae,
                "metrics": {key: r.metrics.get(key) for key in keys},
                "uncertainty": {key: r.uncertainty[key] for key in keys if key in r.uncertainty},
                # The estimator behind each absorption number (probe schedule, word splits).
                "estimators": {key: est for key in keys if (est := r.eval.absorption_estimator(key))},
                "status": {key: verdicts[key]["status"] for key in keys if key in verdicts},
                "healthy": healthy,
                "headline_metrics": total,
                "summary": f"{healthy}/{total} healthy",
                "on_frontier": entry.name in on_front,
                "training_tokens": training_tokens(entry.name),
                "reused": entry.reused,
            }
        )
    summary = {
        "schema_version": COMPARISON_SCHEMA_VERSION,
        "view": comparison.view,
        "settings": comparison.settings,
        "identical_tokens": comparison.identical_tokens,
        "hooks": comparison.hooks,
        "saes": saes,
    }
    if comparison.differences is not None:
        summary["differences"] = comparison.differences
    if comparison.replace_all is not None:
        summary["replace_all"] = comparison.replace_all
    if comparison.view == "comparison" or shares_a_hook(comparison.entries):
        summary["frontier_l0_loss_recovered"] = frontier_names(comparison, "loss_recovered")
        summary["frontier_l0_explained_variance"] = frontier_names(comparison, "explained_variance")
    summary.update(
        files={key: os.path.relpath(path, comparison.out) for key, path in comparison.files.items()},
        notes=comparison.notes,
        timing=_rounded(comparison.timing),
    )
    return summary


def _token_key(result: EvalResult) -> tuple:
    e = result.eval
    return (e.model, e.dataset, e.split, e.n_tokens, e.tokens_scored, e.context_length, e.seed, e.mask_special_tokens)


def _rounded(timing: dict) -> dict:
    return {k: _rounded(v) if isinstance(v, dict) else round(v, 4) for k, v in timing.items()}
