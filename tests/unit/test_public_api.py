"""The top-level API the README shows: `saehealth.evaluate`, `load_sae`, `load_model`, `load_dataset`."""

from __future__ import annotations

import importlib

import saehealth


def test_top_level_functions_are_callable_even_after_their_modules_were_imported():
    importlib.import_module("saehealth.evaluation")
    importlib.import_module("saehealth.compare")
    for name in ("evaluate", "load_sae", "load_model", "load_dataset"):
        assert callable(getattr(saehealth, name)), name
    from saehealth.evaluation import evaluate

    assert saehealth.evaluate is evaluate
