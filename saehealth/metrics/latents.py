"""Latent examples, collected during the pass: per latent, its top-k activations, a uniform random sample
of its other firings, and activation statistics, so a report can show what each latent fires on without a
second pass over the model.

State (all on the evaluation's device, memory ∝ d_sae, never ∝ tokens):
- `top`: per latent, the k firings with the largest activation;
- `sample`: per latent, the m firings with the largest random key: a uniform sample without replacement
  of its firings (every firing gets a key, the m largest keys win: the same top-k machinery);
- each kept firing's activation, sequence id, position, and the latent's activation on the ±`window`
  tokens around it (NaN outside the sequence or at masked positions), so the report can shade a context;
- per latent: firing count, activation sum and a histogram over log2 |activation|.

The random key of a firing is a hash of (sequence id, position, latent), not a draw from a generator, so
the selection does not depend on how the tokens were chunked or split over ranks: `merge` of two states is
exactly the state of one pass over all their tokens. Ties (equal activation, equal key) go to the earliest
(sequence, position), again independent of chunking.

Sequence ids are the index of the sequence in the evaluation's own order (`data.sequence_batches` for the
result's settings), so token windows are recovered from the dataset later without storing tokens. A chunk
passed to `update` should hold whole sequences: a window is cut where the chunk cuts its sequence.
"""

from __future__ import annotations

import torch

from saehealth.config import DEFAULT_EXAMPLES
from saehealth.metrics.firings import Firings, find_firings

DEFAULT_TOP = DEFAULT_EXAMPLES  # --examples K: top activations kept per latent
WINDOW = 10  # tokens either side of a firing whose activations are kept
# Histogram of log2 |activation|: HIST_BINS_PER_OCTAVE bins per factor of 2 from 2^HIST_LOW to 2^HIST_HIGH;
# activations outside fall into the end bins.
HIST_LOW, HIST_HIGH, HIST_BINS_PER_OCTAVE = -10, 14, 2
_MASK32 = 0xFFFFFFFF
_POSITION_BITS = 24  # (sequence, position) packed into one int64 for ordering: positions < 2^24
_PRESELECT_ABOVE = 4096  # candidates in one offer above which a cheap pre-selection runs first


def state_bytes(d_sae: int, top: int = DEFAULT_TOP, sample: int | None = None, window: int = WINDOW) -> int:
    """Bytes of a `LatentExamples` state, fixed from the start (it never grows with tokens): per latent and kept
    firing a key (8), activation, sequence, position and pointer (4 each) and a bfloat16 window (2·(2w+1)); per
    latent the histogram (4 per bin), the activation sum and the latent's hash (8 each). With the defaults
    (20 top + 10 sampled, window 10): 2,188 bytes per latent, 137 MiB at 65,536 latents. It sits beside the pass's
    chunk budget (scoring.chunk_tokens), bounded through --examples (config.MAX_EXAMPLES)."""
    slots = top + (sample_size(top) if sample is None else sample)
    n_bins = (HIST_HIGH - HIST_LOW) * HIST_BINS_PER_OCTAVE
    return d_sae * (slots * (8 + 4 * 4 + 2 * (2 * window + 1)) + 4 * n_bins + 8 + 8)


def sample_size(top: int) -> int:
    """The random sample kept beside `top` top activations: half as many (20 → 10)."""
    return (top + 1) // 2


def histogram_edges() -> torch.Tensor:
    """Edges (in activation units) of the per-latent activation histogram: (bins + 1,)."""
    n = (HIST_HIGH - HIST_LOW) * HIST_BINS_PER_OCTAVE
    return torch.pow(2.0, torch.linspace(HIST_LOW, HIST_HIGH, n + 1, dtype=torch.float64))


def token_locations(batch: int, length: int, first_sequence: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence ids, positions), each (batch, length), of a batch of whole sequences numbered from
    `first_sequence`."""
    sequences = torch.arange(first_sequence, first_sequence + batch, device=device)[:, None].expand(batch, length)
    positions = torch.arange(length, device=device)[None, :].expand(batch, length)
    return sequences, positions


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) on int64 tensors holding values in [0, 2^32).
    The multiplier is below 2^27, so no product overflows int64: identical on every device."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def token_hashes(sequences: torch.Tensor, positions: torch.Tensor, seed: int) -> torch.Tensor:
    """A 32-bit hash of each token's (sequence, position, seed) (int64)."""
    return _mix32(_mix32((sequences ^ (seed & _MASK32)) & _MASK32) ^ (positions & _MASK32))


def latent_hashes(latents: torch.Tensor) -> torch.Tensor:
    """A 32-bit hash of each latent id (int64)."""
    return _mix32((latents + 0x9E3779B9) & _MASK32)


def firing_keys(token_hash: torch.Tensor, latent_hash: torch.Tensor) -> torch.Tensor:
    """The random key in [0, 2^32) of each firing (int64), from its token's and its latent's hashes.

    For one latent this is a bijection of the token hash, so its firings' keys are as uniform as the token
    hashes; the multiply-xorshift round keeps two latents from ranking tokens alike."""
    x = token_hash ^ latent_hash
    x = (x * 0x45D9F3B) & _MASK32
    return x ^ (x >> 16)


def _ordered_key(values: torch.Tensor) -> torch.Tensor:
    """float32 values -> int64 keys in [0, 2^32) with the same order (larger value, larger key)."""
    bits = values.float().contiguous().view(torch.int32).to(torch.int64)
    # Non-negative floats order like their bits; negative ones in reverse: they go below 2^31, reversed.
    return torch.where(bits >= 0, bits + 2**31, -1 - bits)


class _Slots:
    """Per latent, the n firings with the largest keys (ties: earliest sequence, then position)."""

    def __init__(self, d_sae: int, n: int, window: int, device):
        self.n = n
        self.key = torch.full((d_sae, n), -1, dtype=torch.int64, device=device)  # -1: empty
        self.value = torch.full((d_sae, n), float("nan"), dtype=torch.float32, device=device)
        self.sequence = torch.full((d_sae, n), -1, dtype=torch.int32, device=device)
        self.position = torch.full((d_sae, n), -1, dtype=torch.int32, device=device)
        # Windows stay where they were written (a pool row per slot); entries point at theirs, so an entry
        # that moves down its latent's ranking moves a pointer, not 21 activations.
        self.pointer = torch.arange(d_sae * n, dtype=torch.int32, device=device).view(d_sae, n)
        self.pool = torch.full((d_sae * n, 2 * window + 1), float("nan"), dtype=torch.bfloat16, device=device)

    def threshold(self) -> torch.Tensor:
        """Per latent, the smallest key still kept (-1 while fewer than n are kept): a firing with a smaller
        key can never enter."""
        return self.key[:, -1]

    def offer(self, latent, key, sequence, position, payload) -> None:
        """Keep the best n per latent of the current entries and these candidates.

        `payload(index)` gives (value, window) for the candidates at `index` (only those that are kept
        are asked for, so windows are gathered for few firings)."""
        if latent.numel() == 0:
            return
        d_sae, n = self.key.shape
        if latent.numel() > _PRESELECT_ABOVE:
            latent, key, sequence, position, index = _preselect(latent, key, sequence, position, n, d_sae)
            payload = _reindexed(payload, index)
        rows = torch.bincount(latent, minlength=d_sae).nonzero().squeeze(1)  # sorted (torch.unique is slow on CPU)
        # The union: every slot of the affected rows (so each row keeps exactly n), then the candidates.
        union_key = torch.cat([self.key[rows].reshape(-1), key])
        union_sequence = torch.cat([self.sequence[rows].reshape(-1).to(torch.int64), sequence])
        union_position = torch.cat([self.position[rows].reshape(-1).to(torch.int64), position])
        union_latent = torch.cat([rows.repeat_interleave(n), latent])
        union_location = (union_sequence << _POSITION_BITS) | union_position
        old_location, new_location = union_location[: rows.numel() * n], union_location[rows.numel() * n :]
        located = bool((new_location[1:] >= new_location[:-1]).all()) and bool(old_location.max() < new_location[0])
        order = _best_first(union_latent, union_key, union_location, located)
        kept = _first_n_per_group(union_latent, order, n)
        old_count = rows.numel() * n
        from_old = kept < old_count
        old_pointer = self.pointer[rows].reshape(-1)
        evicted = torch.ones(old_count, dtype=torch.bool, device=kept.device)
        evicted[kept[from_old]] = False
        value = torch.cat([self.value[rows].reshape(-1), torch.empty_like(key, dtype=self.value.dtype)])
        pointer = torch.cat([old_pointer, torch.empty_like(key, dtype=old_pointer.dtype)])
        new = kept[~from_old]
        if new.numel():
            new_value, new_window = payload(new - old_count)
            freed = old_pointer[evicted]  # as many as new entries: each row keeps n
            self.pool[freed] = new_window.to(self.pool.dtype)
            value[new] = new_value.to(value.dtype)
            pointer[new] = freed
        shape = (rows.numel(), n)  # kept: rows in ascending latent order, n best each
        self.key[rows] = union_key[kept].view(shape)
        self.sequence[rows] = union_sequence[kept].view(shape).to(torch.int32)
        self.position[rows] = union_position[kept].view(shape).to(torch.int32)
        self.value[rows] = value[kept].view(shape)
        self.pointer[rows] = pointer[kept].view(shape)

    def windows(self) -> torch.Tensor:
        """(d_sae, n, 2·window + 1) activations around each kept firing."""
        return self.pool[self.pointer.long()]

    def entries(self) -> tuple[torch.Tensor, ...]:
        """(latent, key, sequence, position, value, window) of every kept firing, flattened."""
        full = self.key >= 0
        latent = torch.arange(self.key.shape[0], device=self.key.device)[:, None].expand_as(self.key)
        return (
            latent[full],
            self.key[full],
            self.sequence[full].to(torch.int64),
            self.position[full].to(torch.int64),
            self.value[full],
            self.pool[self.pointer[full].long()],
        )


def _preselect(latent, key, sequence, position, n: int, d_sae: int):
    """Drop candidates that cannot be among their latent's n best: below the n-th largest key of their own
    latent among the candidates (ties kept; the exact ordering is `_best_first`'s). One unstable sort instead
    of two stable ones over the whole set, for chunks where most firings are candidates."""
    composite = (latent << 33) | (_MASK32 - key)
    ordered = torch.sort(composite).values
    sorted_latent = ordered >> 33
    counts = torch.bincount(sorted_latent, minlength=d_sae)
    starts = torch.cumsum(counts, 0) - counts
    nth = starts + n - 1  # where each latent's n-th best candidate sits (if it has n)
    cutoff = torch.full((d_sae,), -1, dtype=torch.int64, device=latent.device)
    full = counts >= n
    cutoff[full] = _MASK32 - (ordered[nth[full]] & (2**33 - 1))
    index = torch.nonzero(key >= cutoff[latent]).squeeze(1)
    return latent[index], key[index], sequence[index], position[index], index


def _reindexed(payload, index):
    return lambda i: payload(index[i])


def _best_first(latent, key, location, located: bool) -> torch.Tensor:
    """Indices ordering entries by latent, then key descending, then location ((sequence, position))
    ascending. `located`: the entries are already in location order wherever their keys tie (the stored
    entries of a row are, and a chunk's candidates come after them, in token order): one sort suffices."""
    # key ∈ [-1, 2^32): 2^32 - 1 - key ∈ [0, 2^32] takes 33 bits; latent above them (d_sae < 2^30).
    composite = (latent << 33) | (_MASK32 - key)
    if located:
        return torch.argsort(composite, stable=True)
    order = torch.argsort(location, stable=True)  # empty slots (-1) first: their key is the lowest anyway
    return order[torch.argsort(composite[order], stable=True)]


def _first_n_per_group(latent, order, n: int) -> torch.Tensor:
    """From `order` (grouped by latent), the first n indices of each latent's group, group by group."""
    sorted_latent = latent[order]
    _, counts = torch.unique_consecutive(sorted_latent, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=order.device) - torch.repeat_interleave(starts, counts)
    return order[rank < n]


class LatentExamples:
    """Streams latent activations; keeps per latent its top-k and a uniform sample of its firings.

    `update` takes any chunk of tokens (no Python loop over latents or tokens); `merge` combines the state
    of another accumulator over other tokens exactly (torchrun ranks all-gather and merge).
    """

    def __init__(
        self,
        d_sae: int,
        top: int = DEFAULT_TOP,
        sample: int | None = None,
        *,
        window: int = WINDOW,
        seed: int = 0,
        device="cpu",
    ):
        if top < 1:
            raise ValueError("LatentExamples keeps at least one top activation per latent.")
        self.d_sae, self.radius, self.seed = d_sae, window, seed
        self.top = _Slots(d_sae, top, window, device)
        self.sample = _Slots(d_sae, sample_size(top) if sample is None else sample, window, device)
        self.tokens = 0
        self.activation_sums = torch.zeros(d_sae, dtype=torch.float64, device=device)
        n_bins = (HIST_HIGH - HIST_LOW) * HIST_BINS_PER_OCTAVE
        self.histogram = torch.zeros(d_sae, n_bins, dtype=torch.int32, device=device)
        self._latent_hash = latent_hashes(torch.arange(d_sae, device=device))

    @torch.no_grad()
    def update(
        self,
        feature_acts: torch.Tensor,
        mask: torch.Tensor,
        sequence_ids: torch.Tensor,
        positions: torch.Tensor,
        firings: Firings | None = None,
    ) -> None:
        """Add a chunk: feature_acts (..., d_sae), dense; mask, sequence_ids, positions (...) of the same leading
        shape; `firings`, the chunk's firings when the caller has found them already. Masked positions (False)
        are not firings and are NaN in windows."""
        d = self.d_sae
        acts = feature_acts.reshape(-1, d)
        mask = mask.reshape(-1)
        sequences = sequence_ids.reshape(-1).to(torch.int64)
        positions = positions.reshape(-1).to(torch.int64)
        self.tokens += int(mask.sum())
        found = firings if firings is not None else find_firings(acts, mask)
        token, latent, value = found.token, found.latent, found.value
        self._statistics(latent, value)

        location = (sequences << _POSITION_BITS) | positions

        def payload(index: torch.Tensor):
            return value[index], self._windows(acts, mask, location, token[index], latent[index])

        # Compared as floats first (an empty slot's value is NaN: -inf lets everything in), keyed after.
        floor = self.top.value[:, -1].nan_to_num(nan=-float("inf"))
        candidates = torch.nonzero(value >= floor[latent]).squeeze(1)
        self.top.offer(
            latent[candidates],
            _ordered_key(value[candidates]),
            sequences[token[candidates]],
            positions[token[candidates]],
            lambda i, c=candidates: payload(c[i]),
        )
        keys = firing_keys(token_hashes(sequences, positions, self.seed)[token], self._latent_hash[latent])
        candidates = torch.nonzero(keys >= self.sample.threshold()[latent]).squeeze(1)
        self.sample.offer(
            latent[candidates],
            keys[candidates],
            sequences[token[candidates]],
            positions[token[candidates]],
            lambda i, c=candidates: payload(c[i]),
        )

    def firing_counts(self) -> torch.Tensor:
        """Per latent, the firings seen (every firing falls in one histogram bin)."""
        return self.histogram.sum(1, dtype=torch.int64)

    def _statistics(self, latent: torch.Tensor, value: torch.Tensor) -> None:
        self.activation_sums.index_add_(0, latent, value.to(torch.float64))
        n_bins = self.histogram.shape[1]
        bins = ((value.abs().float().log2() - HIST_LOW) * HIST_BINS_PER_OCTAVE).floor_().clamp_(0, n_bins - 1)
        self.histogram.view(-1).index_add_(0, latent * n_bins + bins.long(), torch.ones_like(latent, dtype=torch.int32))

    def _windows(self, acts, mask, location, token, latent) -> torch.Tensor:
        """(n, 2·radius + 1) activations of `latent` around `token`; NaN beyond the sequence (or this chunk's
        part of it) and at masked positions."""
        offsets = torch.arange(-self.radius, self.radius + 1, device=token.device)
        at = (token[:, None] + offsets).clamp(0, acts.shape[0] - 1)
        # A neighbour counts when it is the token `offset` places on in the same sequence, and scored; a
        # clamped index (beyond the chunk) holds another location, and a masked one a location no token has.
        scored = torch.where(mask, location, torch.full_like(location, -(2**62)))
        valid = scored[at] == location[token][:, None] + offsets
        values = acts.reshape(-1)[at * acts.shape[1] + latent[:, None]].float()
        return values.masked_fill_(~valid, float("nan"))

    def merge(self, other: LatentExamples) -> None:
        """Add another accumulator's state (over other tokens, same settings): exactly as if one pass had
        seen both."""
        if (other.d_sae, other.top.n, other.sample.n, other.radius, other.seed) != (
            self.d_sae,
            self.top.n,
            self.sample.n,
            self.radius,
            self.seed,
        ):
            raise ValueError("Cannot merge latent examples collected with different settings.")
        self.tokens += other.tokens
        self.activation_sums += other.activation_sums.to(self.activation_sums.device)
        self.histogram += other.histogram.to(self.histogram.device)
        for mine, theirs in ((self.top, other.top), (self.sample, other.sample)):
            latent, key, sequence, position, value, window = (t.to(mine.key.device) for t in theirs.entries())
            mine.offer(latent, key, sequence, position, lambda i, v=value, w=window: (v[i], w[i]))

    def arrays(self) -> dict[str, torch.Tensor]:
        """The state as named CPU tensors (the latents file's layout; empty slots: NaN values, id -1)."""
        counts = self.firing_counts().cpu()
        mean = (self.activation_sums.cpu() / counts.clamp_min(1)).float()
        mean[counts == 0] = float("nan")
        arrays = {
            "firing_counts": counts,
            "activation_mean": mean,
            "activation_max": self.top.value[:, 0].cpu(),
            "activation_histogram": self.histogram.cpu(),
            "activation_histogram_edges": histogram_edges(),
        }
        for name, slots in (("top", self.top), ("sample", self.sample)):
            arrays[f"{name}_values"] = slots.value.cpu()
            arrays[f"{name}_sequence"] = slots.sequence.cpu()
            arrays[f"{name}_position"] = slots.position.cpu()
            arrays[f"{name}_window"] = slots.windows().cpu()
        return arrays
