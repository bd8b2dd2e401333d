"""The SAELens subclasses for sparsify's math, on hand-set weights with answers worked out by hand."""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE

from saehealth.loading.architectures import (
    GroupMax,
    SparsifySAE,
    SparsifySAEConfig,
    SparsifyTranscoder,
    SparsifyTranscoderConfig,
)


def test_groupmax_keeps_the_largest_positive_value_per_group():
    x = torch.tensor([[0.5, -1.0, 2.0, 0.1, -3.0, -0.2]])  # 3 groups of 2
    out = GroupMax(3)(x)
    assert out.tolist() == [[0.5, 0.0, 2.0, 0.0, 0.0, 0.0]]  # last group all negative: ReLU leaves 0


def _identity_sae(**cfg) -> SparsifySAE:
    sae = SparsifySAE(SparsifySAEConfig(d_in=2, d_sae=4, k=2, **cfg))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, -1.0, 0.0, 0.5], [0.0, 0.0, 1.0, 0.5]]))
        sae.b_enc.zero_()
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
        sae.b_dec.zero_()
        if cfg.get("skip_connection"):
            sae.W_skip.copy_(torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    return sae


def test_groupmax_sae_by_hand():
    sae = _identity_sae(activation="groupmax")
    x = torch.tensor([[3.0, 1.0]])
    # pre = [3, -3, 1, 2]; groups (3, -3) and (1, 2) -> [3, 0, 0, 2]
    latents = sae.encode(x)
    assert latents.tolist() == [[3.0, 0.0, 0.0, 2.0]]
    assert sae.decode(latents).tolist() == [[3.0, 0.0]]


def test_skip_connection_is_added_on_decode_by_hand():
    sae = _identity_sae(skip_connection=True)
    x = torch.tensor([[3.0, 1.0]])
    # top-2 of [3, -3, 1, 2] -> [3, 0, 0, 2]; decode [3, 0]; skip W_skip @ x = [2, 0]
    assert sae(x).tolist() == [[5.0, 0.0]]
    latents = sae.encode(x)
    assert sae.decode(latents).tolist() == [[5.0, 0.0]]
    with pytest.raises(RuntimeError, match="same batch"):
        sae.decode(latents)  # the remembered input was consumed


def test_skip_input_must_match_the_batch():
    sae = _identity_sae(skip_connection=True)
    sae.encode(torch.ones(3, 2))
    with pytest.raises(RuntimeError, match="skip connection"):
        sae.decode(torch.zeros(5, 4))


def test_custom_classes_round_trip_through_saelens_files(tmp_path):
    sae = _identity_sae(activation="groupmax", skip_connection=True)
    sae.save_model(tmp_path / "sae")
    again = SAE.load_from_disk(tmp_path / "sae")
    assert type(again) is SparsifySAE
    x = torch.randn(4, 2)
    torch.testing.assert_close(again(x), sae(x))

    transcoder = SparsifyTranscoder(SparsifyTranscoderConfig(d_in=3, d_sae=6, d_out=2, k=2, skip_connection=True))
    with torch.no_grad():
        for p in transcoder.parameters():
            p.normal_()
    transcoder.save_model(tmp_path / "tc")
    again = SAE.load_from_disk(tmp_path / "tc")
    assert type(again) is SparsifyTranscoder
    x = torch.randn(4, 3)
    torch.testing.assert_close(again(x), transcoder(x))
    assert again(x).shape == (4, 2)
