"""saehealth: is your sparse autoencoder any good?

Public API (heavy imports happen on first use, so `saehealth --help` stays fast):
- `BUILTIN_MODEL`, `BUILTIN_DATASET`: names of the embedded tiny model and corpus.
- `load_model(name, device=..., dtype=...)`: a TransformerLens `HookedTransformer`.
- `load_dataset(name, split=...)`: a `datasets.Dataset` with a text or tokens column.
- `load_sae(path, ...)`: a `sae_lens.SAE`, whatever library wrote the checkpoint.
- `evaluate(sae_path, **options)`: the typed `EvalResult` of one SAE (options as `saehealth eval`'s);
  `evaluate(sae=obj, model=model, hook=...)` for an SAE object in memory (written only with `out=`).
- `show(result)`, `write_report(result, folder)`: the terminal report, the result folder with its reports.
- `HealthMonitor(model, hook, tokens)`: health checks of an SAE during training, on fixed held-out tokens.
- `saehealth.compare.compare(paths, **options)`: several SAEs side by side on identical tokens.
"""

from __future__ import annotations

from saehealth.builtin import BUILTIN_DATASET, BUILTIN_MODEL

__version__ = "0.1.0"

_LAZY = {
    "load_model": "saehealth.models",
    "load_dataset": "saehealth.data",
    "load_sae": "saehealth.loading",
    "evaluate": "saehealth.evaluation",
    "show": "saehealth.rendering",
    "write_report": "saehealth.rendering",
    "HealthMonitor": "saehealth.monitor",
}

__all__ = ["BUILTIN_DATASET", "BUILTIN_MODEL", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saehealth' has no attribute {name!r}")
