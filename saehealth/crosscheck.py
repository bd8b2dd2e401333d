"""Run SAELens' own `run_evals` on exactly the token batches saehealth evaluates.

Used by the acceptance tests (numbers must agree) and by `scripts/bench_eval.py` (speed ratio). SAELens
draws tokens from an `ActivationsStore`; `FixedTokenStore` stands in for it and hands out the same
batches saehealth replays, so both libraries see identical tokens in identical batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# SAELens key -> saehealth key, for the numbers both compute with the same definition.
SAME_DEFINITION = {
    ("model_performance_preservation", "ce_loss_score"): "loss_recovered",
    ("model_performance_preservation", "ce_loss_without_sae"): "ce_loss_clean",
    ("model_performance_preservation", "ce_loss_with_sae"): "ce_loss_with_sae",
    ("model_performance_preservation", "ce_loss_with_ablation"): "ce_loss_zero_ablation",
    ("model_behavior_preservation", "kl_div_score"): "kl_div_score",
    ("reconstruction_quality", "explained_variance"): "explained_variance",
    ("sparsity", "l0"): "l0",
    ("sparsity", "l1"): "l1",
}


class FixedTokenStore:
    """The part of SAELens' ActivationsStore that `run_evals` uses, over a fixed list of token batches."""

    def __init__(self, batches: Sequence[torch.Tensor]):
        self.batches = list(batches)
        self.context_size = self.batches[0].shape[1]
        self.store_batch_size_prompts = self.batches[0].shape[0]
        self._next = 0

    def get_batch_tokens(self, batch_size: int | None = None) -> torch.Tensor:  # noqa: ARG002
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        return batch

    def reset_input_dataset(self) -> None:
        self._next = 0


def saelens_run_evals(model, sae, batches: Sequence[torch.Tensor]) -> dict:
    """SAELens `run_evals` with every metric on, over `batches` (each used once per metric group)."""
    from sae_lens.evals import get_eval_everything_config, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    store = FixedTokenStore(batches)
    config = get_eval_everything_config(
        batch_size_prompts=store.store_batch_size_prompts,
        n_eval_reconstruction_batches=len(batches),
        n_eval_sparsity_variance_batches=len(batches),
    )
    metrics, _ = run_evals(sae, store, model, ActivationScaler(), config, exclude_special_tokens=True)
    return metrics


def comparable(saelens_metrics: dict) -> dict[str, float]:
    """SAELens numbers renamed to saehealth keys, for those defined identically."""
    return {ours: saelens_metrics[group][key] for (group, key), ours in SAME_DEFINITION.items()}
