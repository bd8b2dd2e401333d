"""Health checks during training: one model, one hook, fixed held-out tokens, any SAE object at every check.

`HealthMonitor(model, hook, tokens)` runs the clean side once, at construction: per batch the clean forward to
the end (its final residual), the activations the hook's continuation needs, and the zero-ablated continuation.
`check(sae, step=..., tokens_seen=...)` then costs one SAE encode/decode per token plus the continuation from the
hook and the unembedding of the spliced run (the clean logits' softmax, entropy and CE are kept too, up to
CLEAN_SIDE_BYTES), and scores exactly what `saehealth eval` scores on those tokens (the same `SAEScorer`
accumulators and `scoring.tally_batch`), so a check's numbers are an evaluation's numbers. Memory: the clean and
zero final residuals and the recorded activations, a few (tokens × d_model) float tensors.

Each check is assessed against the thresholds; `warnings` says what went wrong since the last check (dead
fraction rising past its band, L0 leaving its band, loss recovered falling). Absorption, which prompts the model
for seconds, is measured only when asked (`check(..., absorption=True)`; the training callback does it at the
final check, or every Nth).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from saehealth.data import special_token_mask
from saehealth.errors import ConfigError
from saehealth.loading.objects import sae_of
from saehealth.metrics.downstream import downstream_totals
from saehealth.models import check_hook
from saehealth.replay import (
    BatchOutputs,
    ReplayCache,
    SiteGroup,
    readout,
    record_clean,
    replay_site,
    sae_view,
    splice_site,
    zero_final,
)
from saehealth.sae_scorer import SAEScorer
from saehealth.scoring import tally_batch
from saehealth.verdicts import assess

# The metrics a check reports (and the training callback logs as health/<name>).
CHECK_METRICS = (
    "loss_recovered", "delta_ce", "kl_div_with_sae", "explained_variance", "fvu", "l0", "dead_fraction",
    "dense_fraction", "cossim", "l2_ratio",
)  # fmt: skip
# The clean logits' softmax over the held-out tokens is kept between checks up to this size (tokens × vocabulary
# floats); beyond it each check recomputes it (the same numbers, one more unembedding).
CLEAN_SIDE_BYTES = 2**29
# Loss recovered falling by more than this since the previous check is worth a warning.
LOSS_RECOVERED_DROP = 0.02


@dataclass
class HealthCheck:
    """One check: where in training, the metrics, their verdicts and the warnings since the previous check."""

    step: int | None
    tokens_seen: int | None
    metrics: dict
    verdicts: dict
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        status = {key: v["status"] for key, v in self.verdicts.items() if v.get("headline")}
        return {"step": self.step, "tokens_seen": self.tokens_seen, "metrics": self.metrics, "status": status,
                "warnings": self.warnings, "seconds": round(self.seconds, 4)}  # fmt: skip


@dataclass
class _Batch:
    tokens: torch.Tensor
    mask: torch.Tensor
    clean: torch.Tensor  # final residual of the clean forward
    recorded: dict  # the activations the continuation from the hook needs
    zero: tuple  # zero_final's (final residual, key)
    clean_side: dict | None  # the clean logits' softmax, entropy and CE per tile (None: too big to keep)


class HealthMonitor:
    """Scores SAEs at `hook` of `model` on fixed held-out `tokens` (n_sequences, context), clean side cached.

    `model`: a HookedTransformer (or a name, loaded on `device`). `tokens`: a LongTensor of token ids; use
    `held_out_tokens` for the evaluation's own dataset choice. `thresholds`: a preset name or file (default:
    the default preset)."""

    def __init__(
        self,
        model,
        hook: str,
        tokens: torch.Tensor,
        *,
        batch_size: int = 16,
        include_special_tokens: bool = False,
        thresholds=None,
        device: str | None = None,
    ):
        if isinstance(model, str):
            from saehealth.models import load_model

            model = load_model(model, device=device or "cpu")
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int):
            raise ConfigError("HealthMonitor needs tokens as a (n_sequences, context) tensor of token ids.")
        if tokens.shape[1] < 2:
            raise ConfigError("HealthMonitor needs sequences of at least 2 tokens to score next-token predictions.")
        check_hook(model, hook)
        self.model, self.hook, self.thresholds = model, hook, thresholds
        self.device = str(model.cfg.device)
        self.site = splice_site(hook)
        self.history: list[HealthCheck] = []
        self._readout = readout(model)
        cache = ReplayCache()
        self._batches: list[_Batch] = []
        keep_clean_side = tokens.numel() * int(model.cfg.d_vocab) * 4 <= CLEAN_SIDE_BYTES
        with torch.no_grad():
            for start in range(0, tokens.shape[0], batch_size):
                batch = tokens[start : start + batch_size].to(self.device)
                mask = special_token_mask(batch, model.tokenizer, include_special_tokens)
                clean, recorded = record_clean(model, [self.site], batch)
                zero = zero_final(model, self.site, batch, recorded, cache)
                clean_side = {} if keep_clean_side else None
                if clean_side is not None:  # the clean logits' softmax, entropy and CE, tile by tile, now
                    downstream_totals(self._readout, clean, [], batch, mask, clean_side)
                self._batches.append(_Batch(batch, mask, clean, recorded, zero, clean_side))
            # The reconstruction's reference mean, from the first sequence (as scoring._set_references).
            first = tokens[:1].to(self.device)
            _, act = model.run_with_cache(first, names_filter=[hook])
            self._reference = (sae_view(act[hook], self.site.head_dims, None), self._batches[0].mask[:1])
        self.width = int(self._reference[0].shape[-1])
        self.n_tokens = int(tokens.numel())

    @torch.no_grad()
    def score(self, sae):
        """The pass's `PassOutput` of `sae` on the monitor's tokens (the clean side reused)."""
        wrapped = sae_of(sae, self.width, self.hook)
        was_training = wrapped.training
        scorer = SAEScorer(wrapped, self.device)
        scorer.tally.reconstruction.set_reference(*self._reference)
        seen = 0
        try:
            for batch in self._batches:
                scorer.begin(torch.arange(seen, seen + batch.tokens.shape[0], device=batch.tokens.device))
                seen += batch.tokens.shape[0]
                group = SiteGroup(self.site, [scorer])
                site_out = replay_site(self.model, group, batch.tokens, batch.mask, batch.recorded, None, batch.zero)
                out = BatchOutputs(batch.clean, [site_out])
                tally_batch(self._readout, [[0]], [scorer], out, batch.tokens, batch.mask, batch.clean_side)
        finally:
            scorer.restore()
            wrapped.train(was_training)  # a training loop's SAE goes back to training mode
        return scorer.tally.output(), wrapped

    def check(self, sae, *, step: int | None = None, tokens_seen: int | None = None, absorption: bool = False):
        """Score `sae` now; returns the `HealthCheck` (also appended to `history`)."""
        t0 = time.perf_counter()
        output, wrapped = self.score(sae)
        metrics = {key: output.metrics.get(key) for key in CHECK_METRICS}
        not_measured = {}
        if absorption:
            metrics.update(self._absorption(wrapped, not_measured))
        verdicts = assess(metrics, not_measured, self.thresholds, d_sae=int(wrapped.cfg.d_sae))
        check = HealthCheck(step, tokens_seen, metrics, verdicts, seconds=time.perf_counter() - t0)
        check.warnings = warnings_between(self.history[-1] if self.history else None, check)
        self.history.append(check)
        return check

    def _absorption(self, sae, not_measured: dict) -> dict:
        from saehealth.absorption import AbsorptionSettings, absorption_applicable, measure_absorption
        from saehealth.finishing import cache_dir
        from saehealth.loading.objects import NO_DECODER, decoder_matrix
        from saehealth.result import ABSORPTION_KEYS

        reason = absorption_applicable(self.hook) or (NO_DECODER if decoder_matrix(sae) is None else None)
        if reason is None:
            result = measure_absorption(
                self.model, sae, self.hook, seed=42, cache_dir=cache_dir(), device=self.device,
                settings=AbsorptionSettings(),
            )  # fmt: skip
            reason = result.not_measured_reason
            if reason is None:
                return dict(result.metrics)
        not_measured.update(dict.fromkeys(ABSORPTION_KEYS, reason))
        return dict.fromkeys(ABSORPTION_KEYS)


def warnings_between(previous: HealthCheck | None, current: HealthCheck) -> list[str]:
    """What got worse: dead fraction or L0 leaving their healthy band, loss recovered falling."""
    found = []
    for key, what in (("dead_fraction", "dead fraction"), ("l0", "L0")):
        now = current.verdicts.get(key, {})
        before = previous.verdicts.get(key, {}).get("status") if previous else "healthy"
        if now.get("value") is not None and now.get("status") not in ("healthy", before):
            found.append(f"{what} {now['value']:.4g} is {now['status']} (healthy: {now['band']})")
    drop_from = previous.metrics.get("loss_recovered") if previous else None
    now_lr = current.metrics.get("loss_recovered")
    if drop_from is not None and now_lr is not None and drop_from - now_lr > LOSS_RECOVERED_DROP:
        found.append(f"loss recovered fell from {drop_from:.3f} to {now_lr:.3f} since the last check")
    return found


def held_out_tokens(
    model,
    n_tokens: int,
    context: int | None = None,
    dataset: str | None = None,
    seed: int = 42,
    split: str = "validation",
):
    """(n_sequences, context) token ids of the held-out split the evaluation would use for `model`: the built-in
    corpus for the built-in model, else `dataset`; `split` another split (training data for a loop, say)."""
    import math

    from saehealth import builtin
    from saehealth.data import load_dataset, sequence_batches
    from saehealth.in_memory import model_label

    name = dataset or (builtin.BUILTIN_DATASET if model_label(model) == builtin.BUILTIN_MODEL else None)
    if name is None:
        raise ConfigError("Which held-out data? Pass dataset=NAME (its validation or test split is used).")
    data = load_dataset(name, split)
    context = min(context or model.cfg.n_ctx, model.cfg.n_ctx)
    n_sequences = max(1, math.ceil(n_tokens / context))
    batches = list(sequence_batches(data, model.tokenizer, context, n_sequences, n_sequences, seed))
    return torch.cat(batches)
