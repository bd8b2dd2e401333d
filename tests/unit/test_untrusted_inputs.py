"""Inputs that used to end in a traceback or a write outside saehealth's own folders (issue 18), through the
library: names escaped in report.md, the absorption cache's folder, the bounds on counts, tensors that share
memory, minSAE metadata that is not an object, and latents files checked before they are read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from report_factory import make_result

from saehealth.absorption.cache import MARKER, MARKER_TEXT, own_cache_folder
from saehealth.config import EvalConfig
from saehealth.errors import ConfigError, DataError
from saehealth.finishing import cache_dir
from saehealth.latents.store import LATENTS_FILE, LatentsFile, check_against_result, load_latents
from saehealth.output import separate_tensors
from saehealth.report import render_markdown


# ---------------------------------------------------------------------------------------------- report.md
def test_a_folder_name_holding_html_is_escaped_in_report_md():
    result = make_result()
    result.sae.path = "runs/<script>alert(1)</script>`<img src=x onerror=alert(2)>"
    result.notes = ["seen in <b>bold</b>"]
    text = render_markdown(result, None)
    assert "<script" not in text and "<img" not in text and "<b>" not in text
    assert text.startswith("# SAE health report: script>`&lt;img src=x onerror=alert(2)>\n")  # the folder name
    result.sae.path = "runs/`x` and ``y"  # a code span its own backticks cannot close
    assert "- **SAE**: ```runs/`x` and ``y```" in render_markdown(result, None)


# ---------------------------------------------------------------------------------------------- the cache folder
def test_an_empty_saehealth_cache_means_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SAEHEALTH_CACHE", "")
    assert cache_dir() == tmp_path / ".cache" / "saehealth" / "absorption"
    monkeypatch.setenv("SAEHEALTH_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"


def test_the_cache_writes_only_into_a_folder_of_its_own(tmp_path):
    notes: list[str] = []
    new = tmp_path / "new"
    assert own_cache_folder(new, notes) == new and (new / MARKER).read_text() == MARKER_TEXT
    assert own_cache_folder(new, notes) == new and not notes  # marked: used as it is

    entries_only = tmp_path / "old_cache"  # a cache of an earlier saehealth, before the marker
    entries_only.mkdir()
    (entries_only / "absorption-words-x-seed1-split0-abc.safetensors").write_bytes(b"")
    assert own_cache_folder(entries_only, notes) == entries_only and not notes

    users = tmp_path / "home"
    users.mkdir()
    (users / "thesis.tex").write_text("mine")
    assert own_cache_folder(users, notes) is None
    assert "not saehealth's cache" in notes[-1] and sorted(p.name for p in users.iterdir()) == ["thesis.tex"]

    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "thesis.tex").write_text("mine")
    (forged / MARKER).symlink_to(new / MARKER)  # a link to a real marker is not this folder's marker
    assert own_cache_folder(forged, notes) is None


# ---------------------------------------------------------------------------------------------- counts
@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("n_tokens", 10**30, "--tokens must be at most"),
        ("num_samples", 10**30, "--num-samples must be at most"),
        ("context_length", 2**63, "--context-length must be at most"),
        ("batch_size", 2**40, "--batch-size must be at most"),
        ("examples", 10**9, "--examples must be at most 1,000"),
        ("html_latents", 10**30, "--html-latents must be at most"),
    ],
)
def test_counts_beyond_any_run_are_refused(option, value, message):
    with pytest.raises(ConfigError, match=message):
        EvalConfig(sae_path="x", device="cpu", **{option: value})


# ---------------------------------------------------------------------------------------------- files written
def test_tensors_that_share_memory_are_written_apart(tmp_path):
    from safetensors.torch import load_file, save_file

    top = torch.arange(3.0).reshape(3, 1)  # d_sae 3 with one example kept: the max is a view of the top values
    tensors = separate_tensors({"top_values": top, "activation_max": top[:, 0], "other": torch.ones(2)})
    save_file(tensors, str(tmp_path / "t.safetensors"))
    loaded = load_file(str(tmp_path / "t.safetensors"))
    assert torch.equal(loaded["activation_max"], torch.arange(3.0)) and torch.equal(loaded["top_values"], top)


def test_minsae_metadata_that_is_not_an_object_is_one_line(tmp_path):
    from safetensors.torch import save_file

    from saehealth.activations.minsae import MinSAECache

    save_file({"activations": torch.zeros(8, 4)}, str(tmp_path / "shard_00000.safetensors"))
    for text in ("[1, 2]", '"text"', "3", "null"):
        (tmp_path / "metadata.json").write_text(text)
        with pytest.raises(DataError, match="not minSAE's metadata object"):
            MinSAECache(tmp_path)


# ---------------------------------------------------------------------------------------------- latents files
def _latents(d=4, n=2, window=1, **changes) -> LatentsFile:
    arrays = {
        "firing_counts": torch.ones(d, dtype=torch.int64),
        "activation_mean": torch.ones(d),
        "activation_max": torch.ones(d),
        "activation_histogram": torch.zeros(d, 3, dtype=torch.int64),
        "activation_histogram_edges": torch.arange(4.0),
    }
    for kind in ("top", "sample"):
        arrays |= {
            f"{kind}_values": torch.ones(d, n),
            f"{kind}_sequence": torch.zeros(d, n, dtype=torch.int32),
            f"{kind}_position": torch.zeros(d, n, dtype=torch.int32),
            f"{kind}_window": torch.zeros(d, n, 2 * window + 1),
        }
    return LatentsFile(arrays={**arrays, **changes}, window=window, tokens=10)


def _saved(folder: Path, latents: LatentsFile, **metadata) -> Path:
    from safetensors.torch import save_file

    info = {"format": "1", "window": str(latents.window), "tokens": str(latents.tokens), **metadata}
    save_file(latents.arrays, str(folder / LATENTS_FILE), metadata=info)
    return folder


def test_a_latents_file_saehealth_would_write_is_read(tmp_path):
    latents, reason = load_latents(_saved(tmp_path, _latents()))
    assert reason is None and latents.window == 1 and latents.d_sae == 4
    assert check_against_result(latents, d_sae=4, n_sequences=1, context=1) is None


@pytest.mark.parametrize(
    ("changes", "metadata", "problem"),
    [
        ({}, {"window": "ten"}, "no usable window"),
        ({}, {"tokens": "-1"}, "no usable window"),
        ({}, {"window": "99999999999999999999999"}, "no usable window"),
        ({"top_window": torch.zeros(4, 2, 7)}, {}, "top_window is not of shape"),
        ({"top_position": torch.zeros(4, 2)}, {}, "top_position is not whole numbers"),
        ({"activation_mean": torch.ones(4, dtype=torch.int64)}, {}, "activation_mean is not numbers"),
        ({"firing_counts": -torch.ones(4, dtype=torch.int64)}, {}, "negative counts"),
        ({"sample_sequence": torch.full((4, 2), -7, dtype=torch.int32)}, {}, "negative sample positions"),
        ({"activation_histogram_edges": torch.arange(9.0)}, {}, "activation_histogram is not of shape"),
        ({"firing_counts": torch.ones(0, dtype=torch.int64)}, {}, "no firing_counts"),
    ],
)
def test_a_forged_latents_file_is_not_read(changes, metadata, problem, tmp_path):
    latents, reason = load_latents(_saved(tmp_path, _latents(**changes), **metadata))
    assert latents is None and problem in reason and "--force" in reason


def test_examples_beyond_the_evaluated_tokens_are_refused():
    far = _latents(top_position=torch.full((4, 2), 10**6, dtype=torch.int32))
    assert "beyond the 1 sequences of 128 tokens" in check_against_result(far, 4, 1, 128)
    many = _latents(sample_sequence=torch.full((4, 2), 5, dtype=torch.int32))
    assert "sample examples beyond" in check_against_result(many, 4, 5, 128)
    assert "holds 4 latents, the result 8" in check_against_result(_latents(), 8, 1, 128)


def test_the_manifest_of_the_saebench_folder_is_its_own(tmp_path):
    from saehealth.errors import OutputError
    from saehealth.shared_folder import add_files, check_shared_folder

    new = tmp_path / "new" / "eval_results"
    assert add_files(new, "saebench", {"core/a.json": "1"}, option="--saebench-out") == [new / "core" / "a.json"]
    folder = tmp_path / "eval_results"
    (folder / "core").mkdir(parents=True)
    (folder / "core" / "saebench_own.json").write_text("{}")  # SAEBench's own file beside saehealth's
    written = add_files(folder, "saebench", {"core/a.json": "1"}, option="--saebench-out")
    assert written == [folder / "core" / "a.json"]
    add_files(folder, "saebench", {"core/a.json": "2", "absorption/a.json": "3"}, option="--saebench-out")
    manifest = json.loads((folder / ".saehealth.json").read_text())
    assert manifest["kind"] == "saebench"
    assert manifest["entries"] == ["absorption/", "absorption/a.json", "core/", "core/a.json"]
    assert (folder / "core" / "a.json").read_text() == "2" and (folder / "core" / "saebench_own.json").exists()
    with pytest.raises(OutputError, match="saehealth did not write"):
        check_shared_folder(folder, "saebench", ["core/saebench_own.json"], option="--saebench-out")
    with pytest.raises(OutputError, match="cannot be a file name"):
        check_shared_folder(folder, "saebench", ["core/../x.json"], option="--saebench-out")
