"""One SAE's share of the pass: `SAEScorer` encodes and decodes it in token chunks sized from a memory budget and
feeds its streaming accumulators (`Tally`), whose exact `merge` combines torchrun ranks; `PassOutput` is what a
tally gives the finishing steps.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch

from saehealth.metrics.clusters import SequenceTotals
from saehealth.metrics.dense_kinds import LatentPositionSums, candidate_pairs
from saehealth.metrics.diagnostics import pass_diagnostics
from saehealth.metrics.downstream import DownstreamAccumulator
from saehealth.metrics.firings import find_firings
from saehealth.metrics.latents import LatentExamples, token_locations
from saehealth.metrics.positions import PositionAccumulator
from saehealth.metrics.reconstruction import ReconstructionAccumulator
from saehealth.metrics.sparsity import SparsityAccumulator
from saehealth.metrics.token_explained import TokenSums
from saehealth.quantities import DOWNSTREAM_QUANTITIES, RATIO_METRICS, SEQUENCE_QUANTITIES
from saehealth.replay import SAEOutputs
from saehealth.saebench.sums import SAEBenchSums

# Memory for one chunk of an SAE's latents: a chunk holds the pre-activations, the activations and the temporaries
# of the sparsity statistics, about four float32 copies of (tokens, d_sae).
CHUNK_BYTES_CPU = 2**28
CHUNK_BYTES_ACCELERATOR = 2**30
_COPIES_PER_LATENT = 4
# From this width on, SAELens TopK SAEs hand over their latents as sparse (positions, d_sae) tensors: the decoder
# multiplies k rows per position instead of d_sae, and the sparsity statistics count k entries (2× faster at
# 65,536 latents on a CPU; slower than dense at 4,096).
SPARSE_FROM_D_SAE = 16384


@dataclass
class PassOutput:
    """One SAE's accumulated state after the pass, turned into numbers."""

    metrics: dict
    uncertainty: dict
    details: dict
    n_sequences: int
    tokens_run: int
    tokens_scored: int
    saebench: dict = field(default_factory=dict)  # SAEBench's definitions, where they differ (saebench/sums.py)
    latents: LatentExamples | None = None  # the latent examples (None with --examples 0)
    routing: dict | None = None  # routed SAEs: the routing statistics (saehealth/routed/stats.py)
    # The diagnostics beyond the averages (docs/diagnostics.md): by_position, dense_kinds, token_explained.
    diagnostics: dict = field(default_factory=dict)
    # Per-sequence totals of every SAE of the pass side by side, for paired differences (comparison_differences.py);
    # the same object for every output of one pass, None with a single SAE.
    paired: SequenceTotals | None = None


@dataclass
class Tally:
    """One SAE's accumulators: everything the pass adds up, and one exact `merge` for all of it."""

    reconstruction: ReconstructionAccumulator
    downstream: DownstreamAccumulator
    sparsity: SparsityAccumulator
    saebench: SAEBenchSums
    latents: LatentExamples | None = None
    totals: SequenceTotals = field(default_factory=lambda: SequenceTotals(SEQUENCE_QUANTITIES))
    # The diagnostics' sums (None when the pass runs without them): by position, per latent and position, per
    # latent and token.
    positions: PositionAccumulator | None = None
    latent_positions: LatentPositionSums | None = None
    token_sums: TokenSums | None = None
    n_sequences: int = 0
    tokens_run: int = 0

    def merge(self, other: Tally) -> None:
        self.reconstruction.merge(other.reconstruction)
        self.downstream.merge(other.downstream)
        self.sparsity.merge(other.sparsity)
        self.saebench.merge(other.saebench)
        if self.latents is not None:
            self.latents.merge(other.latents)
        self.totals.merge(other.totals)
        for name in ("positions", "latent_positions", "token_sums"):
            if getattr(self, name) is not None:
                getattr(self, name).merge(getattr(other, name))
        self.n_sequences += other.n_sequences
        self.tokens_run += other.tokens_run

    def output(self) -> PassOutput:
        d_out = self.reconstruction.d_in
        metrics: dict = {}
        metrics.update(self.reconstruction.result())
        metrics.update(self.downstream.result())
        metrics.update(self.sparsity.result())
        uncertainty = {key: self.totals.ratio(num, den)[1] for key, (num, den) in RATIO_METRICS.items()}
        saebench, per_latent = self.saebench.result(d_out)
        details = {
            "feature_density": self.sparsity.density(),
            "firing_counts": self.sparsity.firing_counts,
            "l0_histogram": self.sparsity.l0_histogram,
            **per_latent,
        }
        tokens = self.sparsity.tokens
        output = PassOutput(
            metrics, uncertainty, details, self.n_sequences, self.tokens_run, tokens, saebench, self.latents
        )
        if self.positions is not None:
            output.diagnostics, per_latent, kinds = pass_diagnostics(
                self.positions, self.latent_positions, self.token_sums, self.sparsity
            )
            details.update(per_latent)
            metrics.update(kinds)
        return output


def chunk_tokens(d_sae: int, device: str | torch.device) -> int:
    """Tokens per chunk of an SAE's encode/decode, from the memory budget of the device type."""
    budget = CHUNK_BYTES_CPU if torch.device(device).type == "cpu" else CHUNK_BYTES_ACCELERATOR
    return max(1, budget // (d_sae * 4 * _COPIES_PER_LATENT))


class SAEScorer:
    """One SAE during the pass: its chunked reconstruction (a `replay.Splice`) and its accumulators."""

    def __init__(
        self,
        sae,
        device: str | torch.device = "cpu",
        examples: int = 0,
        chunk: int | None = None,
        diagnostics: bool = True,
    ):
        self.sae = sae
        d_out = int(getattr(sae.cfg, "d_out", sae.cfg.d_in))
        d_sae = int(sae.cfg.d_sae)
        latents = LatentExamples(d_sae, examples, device=device) if examples else None
        self.tally = Tally(
            ReconstructionAccumulator(d_out),
            DownstreamAccumulator(),
            SparsityAccumulator(d_sae),
            SAEBenchSums(d_sae),
            latents,
        )
        if diagnostics:  # the diagnostics beyond the averages (docs/diagnostics.md)
            self.tally.positions = PositionAccumulator(d_out)
            self.tally.latent_positions = LatentPositionSums(d_sae)  # pairs: `choose_pairs`
            self.tally.token_sums = TokenSums(d_sae)
        self._tokens: torch.Tensor | None = None  # this batch's token ids, when there is a model
        self.chunk = chunk or chunk_tokens(d_sae, device)
        self._l0: torch.Tensor | None = None  # this batch's per-position L0, from `reconstruct`
        self._sequence_ids: torch.Tensor | None = None  # this batch's sequences in the evaluation's order
        # We flatten attention heads ourselves (and need the flat x for the metrics), as SAELens' evals do.
        self._reshaping = bool(getattr(sae, "hook_z_reshaping_mode", False))
        if self._reshaping:
            sae.turn_off_forward_pass_hook_z_reshaping()
        self._dense_activation = _use_sparse_topk(sae)
        sae.eval()

    def choose_pairs(self, x: torch.Tensor, mask: torch.Tensor) -> None:
        """Pick the antipodal candidate pairs (metrics/dense_kinds.py) from the reference sequence x (1, pos, d_in),
        which every torchrun rank shares; nothing without the diagnostics, and none for an SAE object that exposes
        no decoder matrix (loading/objects.py): antipodal pairs are decoder directions."""
        if self.tally.latent_positions is None or self.sae.W_dec is None:
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse invariant checks")
            acts = self.sae.encode(x.reshape(-1, x.shape[-1]).to(self.sae.dtype))
        self.tally.latent_positions.set_pairs(candidate_pairs(self.sae.W_dec, acts, mask.reshape(-1)))

    def begin(self, sequence_ids: torch.Tensor, tokens: torch.Tensor | None = None) -> None:
        """The next batch's sequences (batch,), numbered in the evaluation's own order: where latent examples
        are found, so that reports recover their tokens; and its token ids (batch, pos), for the token-explained
        shares (None from an activation cache, which has none)."""
        self._sequence_ids = sequence_ids
        self._tokens = tokens
        self.sequence_ids = sequence_ids.cpu()  # the pathological check's random directions are seeded by them

    def reconstruct(self, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x̂ for x = `source` (batch, pos, d_in), encoded and decoded a chunk of whole sequences at a time (at least
        one, whatever the budget); the latents of each chunk go to the latent statistics and are dropped."""
        length = source.shape[1]
        flat, flat_mask = source.reshape(-1, source.shape[-1]).to(self.sae.dtype), mask.reshape(-1)
        step = max(1, self.chunk // length) * length  # whole sequences: per-sequence latent counts stay exact
        parts, l0 = [], []
        examples = self.tally.latents
        if examples is not None:
            sequences, positions = token_locations(*mask.shape, 0, mask.device)
            sequences = self._sequence_ids.to(mask.device)[sequences].reshape(-1)
            positions = positions.reshape(-1)
        for start in range(0, flat.shape[0], step):
            chunk_mask = flat_mask[start : start + step]
            with warnings.catch_warnings():  # torch notes once that it skips checks of the sparse tensor's indices
                warnings.filterwarnings("ignore", message="Sparse invariant checks")
                feature_acts = self.sae.encode(flat[start : start + step])
            parts.append(self.sae.decode(feature_acts))
            found = find_firings(feature_acts, chunk_mask)  # one scan for every latent statistic
            l0.append(self.tally.sparsity.update(feature_acts, chunk_mask, found))
            self.tally.saebench.update_latents(feature_acts, chunk_mask, length, found)
            if self.tally.latent_positions is not None:
                self.tally.latent_positions.update(found, start, length)
                if self._tokens is not None:
                    self.tally.token_sums.update(found, self._tokens.reshape(-1)[start : start + step], chunk_mask)
            if examples is not None:
                end = start + step
                dense = feature_acts.to_dense() if feature_acts.is_sparse else feature_acts
                examples.update(dense, chunk_mask, sequences[start:end], positions[start:end], found)
            del feature_acts
        self._l0 = torch.cat(l0).reshape(mask.shape)
        x_hat = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.last_x_hat = x_hat.reshape(*source.shape[:-1], x_hat.shape[-1])  # for the pathological check
        return self.last_x_hat

    @property
    def batch_l0(self) -> torch.Tensor:
        """The last `reconstruct` call's L0 per position (batch, pos), masked positions included."""
        return self._l0

    def update(
        self, out: SAEOutputs, downstream: dict[str, torch.Tensor] | None, mask: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Add a batch: this SAE's outputs, its downstream per-sequence totals and the mask. Without a model
        (`downstream` None: an activation cache) nothing was predicted, and its downstream totals are zero.
        Returns the batch's per-sequence totals (SEQUENCE_QUANTITIES)."""
        tally = self.tally
        if downstream is not None:
            tally.downstream.update(downstream)
            # A pass without the pathological check (the routed pass) hands over no "kl_random": zero, not measured.
            downstream = {"kl_random": torch.zeros_like(downstream["kl_sae"]), **downstream}
            per_sequence = {key: downstream[key] for key in DOWNSTREAM_QUANTITIES}
        else:
            per_sequence = {key: torch.zeros(mask.shape[0]) for key in DOWNSTREAM_QUANTITIES}
        tally.saebench.update_batch(out.x, out.x_hat, mask, downstream)
        reconstruction = tally.reconstruction.update(out.x, out.x_hat, mask)
        per_sequence.update(sse=reconstruction["sse"], sst=reconstruction["sst"])
        per_sequence.update(n_tokens=mask.sum(1), l0=self._l0.sum(1))
        tally.totals.update(per_sequence)
        if tally.positions is not None:
            tally.positions.update_reconstruction(reconstruction, mask, self._l0, tally.reconstruction.reference)
            if downstream is not None:
                tally.positions.update_downstream(
                    {name: downstream[f"pos_{name}"] for name in ("n_pred", "ce_clean", "ce_sae", "kl_sae")}
                )
        tally.n_sequences += mask.shape[0]
        tally.tokens_run += mask.numel()
        return per_sequence

    def restore(self) -> None:
        """Undo what scoring changed on the SAE."""
        if self._reshaping:
            self.sae.turn_on_forward_pass_hook_z_reshaping()
        if self._dense_activation is not None:
            self.sae.activation_fn = self._dense_activation


def _use_sparse_topk(sae):
    """For a wide SAELens TopK SAE (its own TopK activation, not a subclass's), switch the activation to SAELens'
    sparse output; returns the dense activation to restore afterwards, or None when nothing was changed."""
    from sae_lens.saes.topk_sae import TopK

    activation = getattr(sae, "activation_fn", None)
    if type(activation) is not TopK or activation.use_sparse_activations or sae.cfg.d_sae < SPARSE_FROM_D_SAE:
        return None
    sae.activation_fn = TopK(activation.k, use_sparse_activations=True)
    return activation
