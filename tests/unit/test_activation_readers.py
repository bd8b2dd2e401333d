"""Activation-cache readers on hand-made files: layouts recognised, batches as stored, bad caches refused."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saehealth.activations import open_activations
from saehealth.activations.scoring import CacheData, cache_batches
from saehealth.errors import DataError


def _minsae(folder, shards, context=4, **metadata):
    """minSAE's layout: shard_NNNNN.safetensors with an `activations` (tokens, d) tensor, and metadata.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, acts in enumerate(shards):
        save_file({"activations": acts}, str(folder / f"shard_{i:05d}.safetensors"))
    meta = {"model_name": "m", "layer_idx": 3, "corpus": "HuggingFaceFW/fineweb", "activation_dim": shards[0].shape[1],
            "num_shards": len(shards), "context_length": context, "shard_size": 2, **metadata}  # fmt: skip
    if meta.get("context_length") is not None:
        (folder / "metadata.json").write_text(json.dumps(meta))
    return folder


def _stream(source, batch_size, context):
    return [batch.x for batch in source.batches(batch_size, context)]


def test_minsae_cache_streams_sequences_in_order(tmp_path):
    acts = torch.arange(2 * 12 * 3, dtype=torch.float32).reshape(24, 3)
    _minsae(tmp_path / "cache" / "validation", [acts[:16], acts[16:]])
    source = open_activations(tmp_path / "cache")  # PATH/validation is found from PATH
    info = source.info
    assert (info.layout, info.d_in, info.n_tokens, info.sequence_length) == ("minsae", 3, 24, 4)
    assert (info.hook_name, info.model_name, info.keeps_sequences, info.has_token_ids) == (
        "blocks.3.hook_mlp_out",
        "m",
        False,
        False,
    )
    batches = _stream(source, batch_size=3, context=4)
    assert [tuple(b.shape) for b in batches] == [(3, 4, 3), (1, 4, 3), (2, 4, 3)]  # no batch straddles a shard
    torch.testing.assert_close(torch.cat([b.reshape(-1, 3) for b in batches]), acts)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda p: _minsae(p, [torch.zeros(8, 3)], context=None), "no metadata.json"),
        (lambda p: _minsae(p, [torch.zeros(8, 3), torch.zeros(8, 5)]), "mixes activation widths"),
        (lambda p: _minsae(p, [torch.zeros(8, 3), torch.zeros(8, 3, dtype=torch.float16)]), "mixes activation dtypes"),
        (lambda p: _minsae(p, [torch.zeros(0, 3)]), "holds no activations"),
        (lambda p: _minsae(p, [torch.zeros(6, 3)]), "not whole sequences"),
        (lambda p: _minsae(p, [torch.zeros(8, 3)], activation_dim=7), "activation_dim 7"),
        (lambda p: _minsae(p, [torch.zeros(8, 3, dtype=torch.int32)]), "int32 activations"),
    ],
)
def test_minsae_cache_refusals(tmp_path, build, message):
    build(tmp_path / "cache")
    with pytest.raises(DataError, match=message):
        open_activations(tmp_path / "cache")


def test_metadata_without_shards_is_an_empty_cache(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "metadata.json").write_text(json.dumps({"context_length": 4}))
    with pytest.raises(DataError, match="holds no activations"):
        open_activations(folder)


@pytest.mark.parametrize(
    ("suffix", "dtype"),  # numpy has no bfloat16
    [(".npy", torch.float32), (".npy", torch.float16)]
    + [(".safetensors", dtype) for dtype in (torch.float32, torch.float16, torch.bfloat16)],
)
def test_tensor_files_flat_and_by_sequence(tmp_path, suffix, dtype):
    acts = torch.randn(10, 3).to(dtype)
    path = tmp_path / f"acts{suffix}"
    for shape in ((10, 3), (2, 5, 3)):
        data = acts.reshape(shape)
        np.save(path, data.numpy()) if suffix == ".npy" else save_file({"x": data.contiguous()}, str(path))
        info = open_activations(path).info
        assert (info.layout, info.dtype, info.n_tokens, info.d_in) == ("tensor", dtype, 10, 3)
        assert info.keeps_sequences == (len(shape) == 3)
        batches = _stream(open_activations(path), batch_size=2, context=4)
        if len(shape) == 3:
            assert [tuple(b.shape) for b in batches] == [(2, 5, 3)]
        else:  # blocks of 4 tokens; the last 2 tokens form a shorter block of their own
            assert [tuple(b.shape) for b in batches] == [(2, 4, 3), (1, 2, 3)]
        torch.testing.assert_close(torch.cat([b.reshape(-1, 3) for b in batches]), acts)


def test_tensor_file_refusals(tmp_path):
    save_file({"a": torch.zeros(4, 3), "b": torch.zeros(4, 3)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(DataError, match="holds 2 tensors"):
        open_activations(tmp_path / "two.safetensors")
    assert open_activations(tmp_path / "two.safetensors", hook="b").info.d_in == 3  # named after the hook
    np.save(tmp_path / "flat.npy", np.zeros(12))
    with pytest.raises(DataError, match=r"shape \(12,\)"):
        open_activations(tmp_path / "flat.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3), dtype=np.float32))
    with pytest.raises(DataError, match="holds no activations"):
        open_activations(tmp_path / "empty.npy")
    (tmp_path / "acts.pt").write_bytes(b"")
    with pytest.raises(DataError, match="give a .safetensors or .npy file"):
        open_activations(tmp_path / "acts.pt")
    with pytest.raises(DataError, match="does not exist"):
        open_activations(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(DataError, match="no activation cache saehealth knows"):
        open_activations(tmp_path / "folder")


def test_saved_dataset_reader(tmp_path):
    import datasets

    acts = torch.randn(5, 4, 3)
    tokens = torch.arange(20, dtype=torch.int32).reshape(5, 4)
    features = datasets.Features(
        {
            "blocks.1.hook_resid_post": datasets.Array2D((4, 3), "float32"),
            "token_ids": datasets.Sequence(datasets.Value("int32"), length=4),
        }
    )
    data = {"blocks.1.hook_resid_post": acts.numpy(), "token_ids": tokens.numpy()}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(tmp_path / "ds"))
    source = open_activations(tmp_path / "ds")
    info = source.info
    assert (info.layout, info.hook_name, info.sequence_length, info.n_tokens, info.has_token_ids) == (
        "saelens",
        "blocks.1.hook_resid_post",
        4,
        20,
        True,
    )
    batches = list(source.batches(2, 4))
    torch.testing.assert_close(torch.cat([b.x for b in batches]), acts)
    assert torch.equal(torch.cat([b.token_ids for b in batches]), tokens.long())
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "text"))
    with pytest.raises(DataError, match="no activation column"):
        open_activations(tmp_path / "text")


def test_cache_batches_mask_limit_and_refuse_nan(tmp_path):
    class Tokenizer:
        bos_token_id, eos_token_id, pad_token_id = 0, 0, 0

    acts = torch.randn(3, 4, 2)
    np.save(tmp_path / "acts.npy", acts.half().numpy())
    source = open_activations(tmp_path / "acts.npy")
    (x, mask), *rest = list(cache_batches(CacheData(source, None, max_sequences=2), 4, batch_size=8))
    assert rest == [] and x.shape == (2, 4, 2) and x.dtype == torch.float32 and bool(mask.all())
    torch.testing.assert_close(x, acts[:2].half().float())

    class Source:  # token ids: BOS/EOS/PAD (id 0) are masked as the replay masks them
        info = source.info

        def batches(self, batch_size, context):
            from saehealth.activations.source import ActivationBatch

            yield ActivationBatch(acts, torch.tensor([[0, 5, 6, 0]] * 3), "rows 0–2")

    (_, mask), *_ = cache_batches(CacheData(Source(), Tokenizer(), None), 4, 8)
    assert mask.tolist() == [[False, True, True, False]] * 3

    acts[2, 1, 0] = float("nan")
    np.save(tmp_path / "acts.npy", acts.numpy())
    with pytest.raises(DataError, match="NaN or Inf"):
        list(cache_batches(CacheData(open_activations(tmp_path / "acts.npy"), None, None), 4, 8))
