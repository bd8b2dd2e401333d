"""The whole replacement (`--replace-all`): the model with every SAE of a run spliced in at once.

Per batch: the clean forward, one forward with every SAE's reconstruction replacing its hook's activation at
unmasked positions (each hook reads the activation the replaced earlier hooks produce: the model a user of all the
SAEs together would run), and one with every hook zero-ablated. Their final residuals go through the same
downstream tiles as the single-SAE metrics (`metrics.downstream.downstream_totals`), so CE, KL and loss recovered of
the full replacement are defined as the per-SAE ones (docs/diagnostics.md): an identity SAE at every hook gives
exactly the clean model, and a single SAE gives its own numbers. It is a second loop over the batches (three
forwards each) after the shared pass; its time is in `timing.replace_all_s`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from saehealth import distributed
from saehealth.data import special_token_mask
from saehealth.errors import ConfigError
from saehealth.metrics.downstream import DownstreamAccumulator, SiteFinals, downstream_totals
from saehealth.replay import SpliceSite, _ln_final, _splice, readout
from saehealth.sae_scorer import chunk_tokens

KEYS = ("ce_loss_with_sae", "ce_loss_zero_ablation", "delta_ce", "loss_recovered", "kl_div_with_sae", "kl_div_score")


class _Reconstruction:
    """An SAE as a `replay.Splice` that only reconstructs (no accumulators), a chunk of sequences at a time."""

    def __init__(self, sae, device):
        self.sae = sae
        self.chunk = chunk_tokens(int(sae.cfg.d_sae), device)

    def reconstruct(self, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: ARG002
        length = source.shape[1]
        flat = source.reshape(-1, source.shape[-1]).to(self.sae.dtype)
        step = max(1, self.chunk // length) * length
        parts = [self.sae.decode(self.sae.encode(flat[i : i + step])) for i in range(0, flat.shape[0], step)]
        x_hat = torch.cat(parts)
        return x_hat.reshape(*source.shape[:-1], x_hat.shape[-1])


def _hooks(members: Sequence[tuple[SpliceSite, object]], mask: torch.Tensor, device) -> list:
    """Forward hooks replacing every site's activation with its SAE's reconstruction (transcoders read their input
    hook on the way)."""
    hooks, inputs = [], {}
    for site, sae in members:
        splice = _Reconstruction(sae, device)
        if site.is_transcoder:

            def capture(activation, hook, site=site):  # noqa: ARG001
                inputs[site] = activation

            hooks.append((site.input_hook, capture))

        def replace(activation, hook, site=site, splice=splice):  # noqa: ARG001
            source = inputs.pop(site) if site.is_transcoder else activation
            return _splice(splice, site, source, activation, mask)[2]

        hooks.append((site.hook_name, replace))
    return hooks


@torch.no_grad()
def replace_all_metrics(
    model,
    members: Sequence[tuple[SpliceSite, object]],
    batches: Iterable[torch.Tensor],
    include_special_tokens: bool = False,
    device: str = "cpu",
) -> dict | None:
    """CE, KL and loss recovered with every (site, SAE) of `members` spliced in at once, and every site
    zero-ablated at once for the loss recovered's floor: {key: value} over KEYS plus "ce_loss_clean" and
    "n_saes". Under torchrun each rank passes its shard; rank 0 gets the merged numbers, the others None."""
    with distributed.step():
        totals = DownstreamAccumulator()
        unembedding = readout(model)
        stop = model.cfg.n_layers
        for tokens in batches:
            tokens = tokens.to(device)
            mask = special_token_mask(tokens, model.tokenizer, include_special_tokens)
            clean = _ln_final(model, model(tokens, stop_at_layer=stop))
            with model.hooks(fwd_hooks=_hooks(members, mask, device)):
                replaced = _ln_final(model, model(tokens, stop_at_layer=stop))
            zero_hooks = [(site.hook_name, _zero(mask, site)) for site, _ in members]
            with model.hooks(fwd_hooks=zero_hooks):
                zero = _ln_final(model, model(tokens, stop_at_layer=stop))
            shared, (site,), ((own,),) = downstream_totals(
                unembedding, clean, [SiteFinals(zero, None, [replaced])], tokens, mask, agreement=False
            )
            totals.update({**shared, **site, **own})
    merged = distributed.merge_on_first_rank([totals])
    if merged is None:
        return None
    result = merged[0].result()
    return {"n_saes": len(members), "ce_loss_clean": result["ce_loss_clean"], **{k: result[k] for k in KEYS}}


def _zero(mask: torch.Tensor, site: SpliceSite):
    """A hook zeroing the site's activation (its one head, for a per-head SAE) at every position, as the per-SAE
    zero ablation does."""

    def zero(activation, hook):  # noqa: ARG001
        if site.head_index is None:
            return torch.zeros_like(activation)
        out = activation.clone()
        out[..., site.head_index, :] = 0
        return out

    return zero


def check_one_per_hook(named: Sequence[tuple[str, object]]) -> None:
    """ConfigError unless each (name, loaded SAE) writes a hook (and head) of its own: spliced in at once, a second
    SAE at a hook would replace the first one's output."""
    seen: dict[tuple, str] = {}
    for name, loaded in named:
        key = (loaded.output_hook_name or loaded.hook_name, loaded.hook_head_index)
        if key in seen:
            raise ConfigError(
                f"--replace-all splices every SAE in at once, but {seen[key]} and {name} both replace {key[0]}: "
                "compare one SAE per hook (--select picks members of a run folder)."
            )
        seen[key] = name
