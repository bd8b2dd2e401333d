"""Latent × routed layer: how often each latent fires on the tokens routed to each layer.

The shared SAE's latents are read where the pass encodes them: a forward hook on the SAE's `hook_sae_acts_post`
sees every chunk the scorer encodes (dense, or sparse for wide SAELens TopK SAEs), in the order of the flattened
batch, so a running offset pairs each row with its token's routed layer and mask. Nothing is encoded twice.
From the counts: dead latents within each layer, latents that fire at one layer only or at several (MLSAE's
"distribution over layers"), and per latent the (d_sae, L) counts in the details file.
"""

from __future__ import annotations

import torch


class LatentLayerTally:
    """Firing counts (L, d_sae) float64 over unmasked tokens, by the token's routed layer; `merge` adds."""

    def __init__(self, n_routes: int, d_sae: int, device: str | torch.device = "cpu"):
        self.counts = torch.zeros(n_routes, d_sae, dtype=torch.float64, device=device)
        self._layer: torch.Tensor | None = None
        self._keep: torch.Tensor | None = None
        self._offset = 0

    def begin(self, layer: torch.Tensor, mask: torch.Tensor) -> None:
        """The next batch's routed layer and mask (batch, pos), before its tokens are encoded."""
        device = self.counts.device
        self._layer, self._keep, self._offset = layer.reshape(-1).to(device), mask.reshape(-1).to(device), 0

    def end(self) -> None:
        """Stop counting: encodes after this (the splice's, on live activations) are not the gathered ones."""
        self._layer = self._keep = None

    def see(self, acts: torch.Tensor) -> None:
        """One encoded chunk (rows in flattened-batch order)."""
        if self._layer is None:
            return
        n = acts.shape[0]
        layer, keep = self._layer[self._offset : self._offset + n], self._keep[self._offset : self._offset + n]
        self._offset += n
        if acts.is_sparse:
            acts = acts.coalesce()
            rows, cols = acts.indices().to(self.counts.device)
            fired = (acts.values().to(self.counts.device) != 0) & keep[rows]
            ones = torch.ones(int(fired.sum()), dtype=torch.float64, device=self.counts.device)
            self.counts.index_put_((layer[rows[fired]], cols[fired]), ones, accumulate=True)
        else:
            fired = (acts.detach()[keep.to(acts.device)] != 0).to(device=self.counts.device, dtype=torch.float64)
            self.counts.index_add_(0, layer[keep], fired)

    def attach(self, sae):
        """Watch the SAE's activations; returns the handle to `remove()` afterwards."""

        def hook(module, inputs, output):  # noqa: ARG001
            self.see(output)

        return sae.hook_sae_acts_post.register_forward_hook(hook)

    def merge(self, other: LatentLayerTally) -> None:
        self.counts += other.counts.to(self.counts.device)

    def result(self) -> tuple[list[int], dict, torch.Tensor]:
        """(dead latents per layer, the summary over latents, the per-latent counts (d_sae, L))."""
        counts = self.counts.cpu()
        fires = counts > 0
        layers_fired = fires.sum(0)
        summary = {
            "single_layer": int((layers_fired == 1).sum()),
            "multi_layer": int((layers_fired > 1).sum()),
            "never": int((layers_fired == 0).sum()),
        }
        return [int((~row).sum()) for row in fires], summary, counts.T.contiguous()
