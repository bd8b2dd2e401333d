"""When a saved result may stand for a new evaluation: the settings that decide its numbers, and the decision.

A result folder records the request it was computed from (result.json `request`). An evaluation asked again with
the same settings and the same weights reuses it; with the same settings and other weights (the checkpoint was
retrained) it is computed again and replaced; with other settings it is refused, so that --force or another --out
says which result the folder should hold.
"""

from __future__ import annotations

from pathlib import Path

from saehealth.config import EvalConfig
from saehealth.errors import ConfigError
from saehealth.result import RESULT_FILE, EvalResult, load_result

# The options that decide the numbers; a saved result is reused only when they (and the weights) match.
REQUEST_KEYS = (
    "model",
    "hook",
    "layer",
    "dataset",
    "split",
    "n_tokens",
    "num_samples",
    "context_length",
    "seed",
    "include_special_tokens",
    "skip",
    "format",
    "absorption_min_letters",
    "absorption_probes",
    "examples",
)


def request_of(cfg: EvalConfig, weights: str, extra: dict) -> dict:
    """The settings of `cfg` that decide the numbers, the SAE's weights fingerprint and the caller's `extra`."""
    request = {k: list(v) if isinstance(v := getattr(cfg, k), tuple) else v for k in REQUEST_KEYS}
    if cfg.activations is not None:  # only then, so results saved before the option existed stay reusable
        request["activations"] = str(Path(cfg.activations).expanduser().resolve())
    if cfg.route is not None:  # likewise
        request["route"] = cfg.route
    if cfg.dtype not in (None, "float32"):  # likewise: float32 was every result's dtype before it was recorded
        request["dtype"] = cfg.dtype
    request["sae_weights"] = weights  # a retrained checkpoint at the same path is another SAE
    request.update(extra)
    return request


def reusable_result(out: Path, request: dict, force: bool, console=None) -> EvalResult | None:
    """The saved result in `out` when it was computed from `request` (settings and weights), else None.

    A result computed with the same settings from other weights (the checkpoint was retrained, or the
    result predates weight fingerprints) describes another SAE: it is computed again and replaced. One
    computed with other settings is refused.
    """
    path = out / RESULT_FILE
    if force or not path.is_file():
        return None
    saved = load_result(path)  # one line when it is not a readable result: --force replaces it
    saved_request = saved.request or {}
    if saved_request == request:
        if console is not None:
            console.print(f"[dim]Reusing {path} (pass --force to re-run).[/]")
        return saved

    def settings(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "sae_weights"}

    if settings(saved_request) == settings(request):
        if console is not None:
            console.print(f"[dim]{path} was computed from other weights: evaluating these.[/]")
        return None
    raise ConfigError(f"{path} holds a result computed with other settings: pass --force to replace it, or --out DIR.")
