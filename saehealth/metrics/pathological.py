"""The pathological-error check (Gurnee 2024): is the SAE's error worse for the model than random error?

Definitions: docs/diagnostics.md. Beside each SAE's splice, the replay splices x + ε at the same hook, where ε
has a uniformly random direction and, at every position, the norm of that SAE's own error ‖x − x̂‖. The ratio

    pathological_ratio = Σ KL(P_clean ‖ P_sae) / Σ KL(P_clean ‖ P_random)

over predicting positions says how much more (> 1) the SAE's error changes the next-token distribution than an
error of the same size in a random direction: Gurnee found SAE errors pathological (ratios well above 1). It
costs one more continuation per SAE and batch (`--skip pathological` turns it off). Transcoders, whose error is
at another hook than their input, are not checked.
"""

from __future__ import annotations

import torch

SEED = 1234  # a sequence's random directions depend only on this and its number: the same on any torchrun rank


class RandomPerturbation:
    """A `replay.Splice` spliced right after its SAE's: x + a random direction scaled to ‖x − x̂‖ per position."""

    def __init__(self, scorer):
        self.scorer = scorer  # its `last_x_hat` is the SAE's reconstruction of this very batch

    def reconstruct(self, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        x = source.to(self.scorer.last_x_hat.dtype)
        error_norm = (x - self.scorer.last_x_hat).norm(dim=-1, keepdim=True)
        generator = torch.Generator(device="cpu")
        rows = [
            torch.randn(x.shape[1:], generator=generator.manual_seed(SEED + int(i)), dtype=torch.float32)
            for i in self.scorer.sequence_ids.tolist()
        ]
        direction = torch.stack(rows).to(x.device, x.dtype)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        return x + direction * error_norm


def with_random_kl(totals: list[dict], n_saes: int) -> list[dict]:
    """A site's per-SAE downstream totals with "kl_random" from its perturbations' (the entries after the first
    `n_saes`, in the same order), or zeros where there are none."""
    own, random = totals[:n_saes], totals[n_saes:]
    for i, sae in enumerate(own):
        sae["kl_random"] = random[i]["kl_sae"] if random else torch.zeros_like(sae["kl_sae"])
    return own
