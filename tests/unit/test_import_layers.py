"""Layers only import downward and no import cycle forms, as pyproject.toml's [[tool.saehealth.layers]] declares.

The checks live in scripts/import_layers.py (runnable on its own); the first test runs them on saehealth, the others
on a made-up package whose problems are known, so that each check is shown to fail when it should."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from scripts.import_layers import (
    cycles,
    declared_layers,
    import_graph,
    layer_of,
    problems,
)


def test_saehealth_imports_only_downward_and_without_cycles():
    found = problems()
    header = "saehealth's import layers (pyproject.toml [[tool.saehealth.layers]], docs/architecture.md):"
    assert not found, "\n".join([header, *found])


def test_every_declared_layer_has_a_name_and_modules():
    layers = declared_layers()
    assert [layer.name for layer in layers][:1] == ["base"] and layers[-1].name == "cli"
    assert all(layer.modules and layer.owns for layer in layers)


LAYERS = """
[[tool.saehealth.layers]]
name = "base"
owns = "data"
modules = ["result", "loading.files"]

[[tool.saehealth.layers]]
name = "middle"
owns = "work"
modules = ["loading", "metrics"]

[[tool.saehealth.layers]]
name = "top"
owns = "entry"
modules = ["report", "__init__"]
"""


def make_package(root: Path, files: dict[str, str], layers: str = LAYERS) -> Path:
    (root / "pyproject.toml").write_text(layers)
    for name, source in {"saehealth/__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return root


def test_a_clean_package_has_no_problem(tmp_path):
    root = make_package(
        tmp_path,
        {
            "saehealth/result.py": "",
            "saehealth/loading/__init__.py": "from saehealth.loading import files\n",
            "saehealth/loading/files.py": "from saehealth.result import x\n",
            "saehealth/loading/from_x.py": "import saehealth.loading.files as files\n",  # new module: placed by prefix
            "saehealth/report/__init__.py": "def f():\n    from saehealth.loading import load\n",
        },
    )
    assert problems(root) == []
    layers = declared_layers(root)
    # the longest declared name decides: loading.files is base although loading is middle
    assert [layer_of(m, layers) for m in ("saehealth.loading.files", "saehealth.loading.from_x", "saehealth")] == [
        0,
        1,
        2,
    ]


def test_an_upward_import_inside_a_function_is_found_with_its_line(tmp_path):
    root = make_package(
        tmp_path,
        {
            "saehealth/result.py": "import os\n\n\ndef save():\n    from saehealth.report import write\n",
            "saehealth/report/__init__.py": "",
        },
    )
    (problem,) = problems(root)
    assert problem.startswith(
        "saehealth/result.py:5: saehealth.result (layer base) imports saehealth.report (layer top"
    )


def test_a_module_in_no_layer_is_told_where_to_declare_itself(tmp_path):
    root = make_package(
        tmp_path, {"saehealth/monitor.py": "from saehealth.metrics import x\n", "saehealth/metrics.py": ""}
    )
    (problem,) = problems(root)
    assert 'saehealth/monitor.py (saehealth.monitor) is in no layer: add "monitor" to the `modules`' in problem
    assert "pyproject.toml's [[tool.saehealth.layers]]" in problem and "base < middle < top" in problem
    assert "it imports from: middle" in problem


def test_a_cycle_is_named_with_every_import_that_closes_it(tmp_path):
    root = make_package(
        tmp_path,
        {
            "saehealth/metrics.py": "from saehealth.loading import load\n",
            "saehealth/loading/__init__.py": "from .reader import read\n",  # relative imports count
            "saehealth/loading/reader.py": "def read():\n    import saehealth.metrics\n",
        },
    )
    (loop,) = cycles(import_graph(root))
    assert [(edge.importer, edge.imported) for edge in loop] == [
        ("saehealth.loading", "saehealth.loading.reader"),
        ("saehealth.loading.reader", "saehealth.metrics"),
        ("saehealth.metrics", "saehealth.loading"),
    ]
    (problem,) = problems(root)
    assert problem.startswith(
        "import cycle saehealth.loading -> saehealth.loading.reader -> saehealth.metrics -> saehealth.loading: "
        "saehealth/loading/__init__.py:1 imports saehealth.loading.reader; saehealth/loading/reader.py:2 imports"
    )


def test_importing_a_submodule_through_its_package_runs_the_package_too(tmp_path):
    """`from saehealth.loading import files` inside loading/ executes loading/__init__.py: a cycle with it."""
    root = make_package(
        tmp_path,
        {
            "saehealth/loading/__init__.py": "from saehealth.loading.files import read\n",
            "saehealth/loading/files.py": "from saehealth.loading import helpers\n",
            "saehealth/loading/helpers.py": "",
        },
        layers=LAYERS.replace('"loading.files"', '"loading.helpers"'),
    )
    (loop,) = cycles(import_graph(root))
    assert {edge.importer for edge in loop} == {"saehealth.loading", "saehealth.loading.files"}


def test_a_name_declared_twice_is_refused(tmp_path):
    root = make_package(tmp_path, {"saehealth/result.py": ""}, layers=LAYERS.replace('"metrics"', '"result"'))
    assert problems(root) == ['"result" is declared in layer base and again in middle']


@pytest.mark.parametrize("layers", ["", "[tool.saehealth]\n"])
def test_no_declaration_is_a_problem_not_a_pass(tmp_path, layers):
    root = make_package(tmp_path, {"saehealth/result.py": ""}, layers=layers)
    assert problems(root) == [
        "no layers declared: pyproject.toml's [[tool.saehealth.layers]] lists them, bottom to top"
    ]
