"""Round trip through dictionary_learning: build with its trainers, save as its training loop does, compare forwards.

dictionary_learning's package __init__ imports nnsight (for its activation buffer), which the dictionary
classes never use; a stub module stands in for it so the test needs only the package itself
(`pip install --no-deps dictionary-learning`).
"""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

if "nnsight" not in sys.modules:
    try:
        import nnsight  # noqa: F401
    except ImportError:
        stub = types.ModuleType("nnsight")
        stub.LanguageModel = object  # only referenced in type positions by dictionary_learning.buffer
        sys.modules["nnsight"] = stub
pytest.importorskip("dictionary_learning", reason="dictionary_learning is a test-only dependency")

from dictionary_learning.trainers.batch_top_k import BatchTopKTrainer  # noqa: E402
from dictionary_learning.trainers.gdm import GatedSAETrainer  # noqa: E402
from dictionary_learning.trainers.jumprelu import JumpReluTrainer  # noqa: E402
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer  # noqa: E402
from dictionary_learning.trainers.standard import StandardTrainer  # noqa: E402
from dictionary_learning.trainers.top_k import TopKTrainer  # noqa: E402

from saehealth.loading import detect_format, load_checkpoint  # noqa: E402

D_IN, D_SAE, LAYER, LM = 16, 48, 2, "EleutherAI/pythia-70m-deduped"
COMMON = {"steps": 5000, "activation_dim": D_IN, "dict_size": D_SAE, "layer": LAYER, "lm_name": LM, "device": "cpu",
          "submodule_name": f"resid_post_layer_{LAYER}"}  # fmt: skip
BUFFER = {
    "d_submodule": D_IN,
    "io": "out",
    "n_ctxs": 100,
    "ctx_len": 128,
    "refresh_batch_size": 8,
    "out_batch_size": 64,
}


def _trainer(kind: str):
    if kind == "standard":
        return StandardTrainer(**COMMON, l1_penalty=0.04)
    if kind == "gated":
        return GatedSAETrainer(**COMMON)
    if kind == "jumprelu":
        return JumpReluTrainer(**COMMON)
    if kind == "topk":
        return TopKTrainer(**COMMON, k=6)
    if kind == "batchtopk":
        return BatchTopKTrainer(**COMMON, k=6)
    return MatryoshkaBatchTopKTrainer(**COMMON, k=6, group_fractions=[1 / 6, 2 / 6, 3 / 6])


def _perturb(ae) -> None:
    """Random weights everywhere (trainers initialise biases to zero and thresholds to defaults)."""
    with torch.no_grad():
        for name, p in ae.named_parameters():
            if name == "threshold":
                p.uniform_(0.05, 0.5)
            elif name == "r_mag":
                p.normal_(0, 0.3)
            elif p.ndim == 1:
                p.normal_(0, 0.3)
            else:
                p.normal_(0, 0.4)
        if "threshold" in dict(ae.named_buffers()):
            ae.threshold.fill_(0.35)


def _save_like_training_loop(trainer, folder):
    """dictionary_learning.training: config.json with the trainer's config and the buffer's, ae.pt with the state."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"trainer": trainer.config, "buffer": BUFFER}, indent=4))
    torch.save({k: v.cpu() for k, v in trainer.ae.state_dict().items()}, folder / "ae.pt")


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


ARCHITECTURES = {
    "standard": "standard",
    "gated": "gated",
    "jumprelu": "jumprelu",
    "topk": "topk",
    "batchtopk": "batchtopk",
    "matryoshka": "matryoshka_batchtopk",
}


@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_matches_dictionary_learning_forward(tmp_path, kind):
    trainer = _trainer(kind)
    ae = trainer.ae
    _perturb(ae)
    _save_like_training_loop(trainer, tmp_path / "trainer_0")
    assert detect_format(tmp_path / "trainer_0") == "dictionary_learning"
    loaded = load_checkpoint(tmp_path / "trainer_0" / "ae.pt")
    assert loaded.source_library == "dictionary_learning"
    assert loaded.architecture == ARCHITECTURES[kind]
    assert loaded.hook_name == f"blocks.{LAYER}.hook_resid_post"
    assert (loaded.model_name, loaded.context_size) == (LM, 128)
    assert (loaded.d_in, loaded.d_sae) == (D_IN, D_SAE)
    x = torch.randn(64, D_IN) * 2
    with torch.no_grad():
        expected_latents = ae.encode(x)  # each class's default encode: threshold mode for BatchTopK-style
        expected_recon = ae.decode(expected_latents)
        assert torch.allclose(ae(x), expected_recon)
        latents = loaded.sae.encode(x)
        recon = loaded.sae.decode(latents)
    assert (expected_latents != 0).any() and (expected_latents == 0).any()  # a real sparsity pattern is compared
    assert _rel_err(latents, expected_latents) <= 1e-4
    assert _rel_err(recon, expected_recon) <= 1e-4


def test_training_facts_and_sweep_folder(tmp_path):
    for i, kind in enumerate(("topk", "standard")):
        trainer = _trainer(kind)
        _perturb(trainer.ae)
        _save_like_training_loop(trainer, tmp_path / f"trainer_{i}")
    both = load_checkpoint(tmp_path)
    assert [item.architecture for item in both] == ["topk", "standard"]
    assert both[0].training["k"] == 6
    assert both[1].training["l1_penalty"] == 0.04
    assert both[0].training["buffer_ctx_len"] == 128
    one = load_checkpoint(tmp_path, select="trainer_1")
    assert one.architecture == "standard"


def test_without_config_json_the_class_is_inferred_or_refused(tmp_path):
    trainer = _trainer("gated")
    _save_like_training_loop(trainer, tmp_path / "g")
    (tmp_path / "g" / "config.json").unlink()
    loaded = load_checkpoint(tmp_path / "g" / "ae.pt")
    assert loaded.architecture == "gated" and loaded.hook_name is None
    trainer = _trainer("topk")
    _save_like_training_loop(trainer, tmp_path / "t")
    (tmp_path / "t" / "config.json").unlink()
    with pytest.raises(Exception, match="AutoEncoderTopK and BatchTopKSAE"):
        load_checkpoint(tmp_path / "t" / "ae.pt")
