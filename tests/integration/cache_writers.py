"""Activation caches of the built-in model, written the way the libraries that own the layouts write them.

`write_minsae_cache` is minSAE's `cache_activations` (cloneofsimo/minSAE, sae.py) step for step, with the
built-in TransformerLens model standing in for the Hugging Face model minSAE hooks (`layers.N.mlp.down_proj`,
i.e. `blocks.N.hook_mlp_out`) and the built-in corpus for FineWeb. `write_saelens_cache` runs SAELens' own
`CacheActivationsRunner`, handing it the built-in model and corpus the way saehealth's training does.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from saehealth import builtin
from saehealth.data import load_dataset


@torch.no_grad()
def write_minsae_cache(
    model, layer: int, output_dir: Path, *, context_length=128, num_val_samples=20, shard_size=8, batch_size=4
) -> torch.Tensor:
    """minSAE's validation cache of the built-in corpus; returns the token ids it ran, (samples, context)."""
    texts = load_dataset(builtin.BUILTIN_DATASET, "validation")["text"][:num_val_samples]
    tokenizer = model.tokenizer
    tokenizer.pad_token = tokenizer.eos_token
    split_dir = Path(output_dir) / "validation"
    split_dir.mkdir(parents=True, exist_ok=True)
    current: list[torch.Tensor] = []
    shard_idx = samples_processed = total_tokens_processed = 0
    token_ids = []

    def save_shard(acts: list[torch.Tensor], idx: int) -> list:
        save_file({"activations": torch.cat(acts, dim=0)}, str(split_dir / f"shard_{idx:05d}.safetensors"))
        return []

    def hook_fn(act, hook):  # noqa: ARG001
        current.extend(list(act.detach().cpu()))

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_mlp_out", hook_fn)]):
        for i in range(0, len(texts), batch_size):
            batch = texts[i : i + batch_size]
            inputs = tokenizer(
                batch, max_length=context_length, truncation=True, padding="max_length", return_tensors="pt"
            )
            # minSAE's HF model also takes the attention mask, which only changes the padded positions' values.
            model(inputs["input_ids"], return_type=None)
            token_ids.append(inputs["input_ids"])
            samples_processed += len(batch)
            total_tokens_processed += inputs["input_ids"].numel()
            if len(current) >= shard_size:
                current = save_shard(current, shard_idx)
                shard_idx += 1
            if samples_processed >= num_val_samples:
                break
    if current:
        save_shard(current, shard_idx)
    metadata = {
        "model_name": builtin.BUILTIN_MODEL,
        "layer_idx": layer,
        "corpus": "HuggingFaceFW/fineweb",
        "activation_dim": model.cfg.d_model,
        "num_shards": shard_idx + 1,
        "samples_processed": samples_processed,
        "total_tokens_processed": total_tokens_processed,
        "context_length": context_length,
        "shard_size": shard_size,
    }
    (split_dir / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return torch.cat(token_ids)


def write_saelens_cache(
    model, hook_name: str, output_dir: Path, *, context=128, batch=8, batches_per_shard=2, shards=2
):
    """SAELens' CacheActivationsRunner over the built-in corpus's validation split; returns the saved dataset.

    The runner loads its model by name through `sae_lens.load_model`, which knows nothing of the built-in model:
    that one call is pointed at the already loaded model (the runner takes the dataset as `override_dataset`)."""
    import sae_lens.cache_activations_runner as runner_module
    from sae_lens import CacheActivationsRunner, CacheActivationsRunnerConfig

    tokens_per_shard = batches_per_shard * batch * context
    cfg = CacheActivationsRunnerConfig(
        dataset_path=builtin.BUILTIN_DATASET,
        model_name=builtin.BUILTIN_MODEL,
        model_batch_size=batch,
        hook_name=hook_name,
        d_in=model.cfg.d_model,
        training_tokens=shards * tokens_per_shard,
        context_size=context,
        new_cached_activations_path=str(output_dir),
        device="cpu",
        shuffle=False,
        # One buffer is one shard on disk: sized in GB from the bytes of a shard's tokens.
        buffer_size_gb=(tokens_per_shard * model.cfg.d_model * 4 + 100) / 1e9,
    )
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # SAELens' notes on a small, untokenized dataset
        original = runner_module.load_model
        runner_module.load_model = lambda *args, **kwargs: model
        try:
            runner = CacheActivationsRunner(cfg, override_dataset=load_dataset(builtin.BUILTIN_DATASET, "validation"))
        finally:
            runner_module.load_model = original
        return runner.run()
