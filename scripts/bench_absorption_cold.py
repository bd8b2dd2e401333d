#!/usr/bin/env python
"""Cold absorption (5 word splits, both schedules) with the code as it is against the code path it replaced.

    python scripts/bench_absorption_cold.py --sae-path checkpoints/demo [--repeats 5] [--threads 1]

What `scripts/crosscheck_saebench.py` times as saehealth's cold run (`measure_absorption` with a fresh cache
folder, the default 5 splits, `converged` headline and `saebench-0.6` beside it, SAEBench's letter minimum
lowered to 10 as for the demo SAE), run alternately two ways in one process:

- `before`: the replaced code paths, restored for the run: each split's saebench-0.6 letter probes trained in
  a loop of their own, and the prompts' shared prefix keys copied once per word and then again to append
  the word (TransformerLens's cache entry);
- `after`: the code as it is (one stacked loop for the splits' letter probes; one copy of the prefix keys).

(A third, smaller change is in both: each split's train and test latent rows are selected once for both
schedules instead of once per schedule, so the ratio slightly understates the whole change.)

Prints each run's CPU and wall seconds, then the medians and the ratio of median CPU times (on a busy machine
CPU seconds are the fair measure), and checks that both ways give the same metrics and per-letter arrays,
bit for bit (true on 2026-12-07; since the head-by-head prefix keys of 2026-12-08, the same to float rounding,
which it also checks). With --saebench-ratio R (SAEBench's CPU time over saehealth's cold CPU time measured before the
change, 4.2 on 2026-12-07), also prints the ratio to expect now: R x before / after.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _CopiedPrefixEntry:
    """The replaced word pass: prefix keys copied once per word, then copied again by torch.cat to append."""

    frozen = True

    def __init__(self, entry, owner):
        self.past_keys = entry.past_keys.index_select(0, owner.to(entry.past_keys.device))
        self.past_values = entry.past_values.index_select(0, owner.to(entry.past_values.device))

    def append(self, new_keys, new_values):
        import torch

        return torch.cat([self.past_keys, new_keys], dim=1), torch.cat([self.past_values, new_values], dim=1)


@contextmanager
def replaced_code_paths():
    """Restore, for the duration, the code paths this change replaced (see the module docstring)."""
    import saehealth.absorption.measure as measure
    import saehealth.absorption.words as words

    def one_split_at_a_time(datas, labels, *, seeds):
        return [
            measure.train_letter_probes(d, labels, "saebench-0.6", seed=s) for d, s in zip(datas, seeds, strict=True)
        ]

    saved = measure.train_letter_probes_together, words._SharedPrefixEntry
    measure.train_letter_probes_together, words._SharedPrefixEntry = one_split_at_a_time, _CopiedPrefixEntry
    try:
        yield
    finally:
        measure.train_letter_probes_together, words._SharedPrefixEntry = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sae-path", required=True, help="the SAE (e.g. checkpoints/demo, from `saehealth demo`)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved before/after pairs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the cross-check uses 1)")
    parser.add_argument("--min-letters", type=int, default=10, help="letters needed (the demo SAE: 10)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--saebench-ratio", type=float, default=None, help="SAEBench CPU / cold CPU before")
    args = parser.parse_args()

    import numpy as np
    import torch

    import saehealth
    from saehealth.absorption import AbsorptionSettings, measure_absorption

    torch.set_num_threads(args.threads)
    model = saehealth.load_model(saehealth.BUILTIN_MODEL)
    sae = saehealth.load_sae(args.sae_path)
    hook = sae.cfg.metadata.hook_name
    settings = AbsorptionSettings(min_letters=args.min_letters)
    print(f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")

    def cold(way: str):
        with tempfile.TemporaryDirectory() as cache_dir:
            paths = replaced_code_paths() if way == "before" else _nothing()
            with paths:
                cpu, wall = time.process_time(), time.perf_counter()
                result = measure_absorption(
                    model, sae, hook, seed=args.seed, cache_dir=Path(cache_dir), settings=settings
                )
                return result, time.process_time() - cpu, time.perf_counter() - wall

    spent: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    results = {}
    for repeat in range(args.repeats):
        for way in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
            results[way], cpu, wall = cold(way)
            spent[way].append((cpu, wall))
            print(f"repeat {repeat + 1} {way:<6} CPU {cpu:6.2f} s  wall {wall:6.2f} s", flush=True)
    cpu = {way: float(np.median([c for c, _ in runs])) for way, runs in spent.items()}
    wall = {way: float(np.median([w for _, w in runs])) for way, runs in spent.items()}
    print(f"median CPU  before {cpu['before']:.2f} s, after {cpu['after']:.2f} s: x{cpu['before'] / cpu['after']:.2f}")
    print(
        f"median wall before {wall['before']:.2f} s, after {wall['after']:.2f} s: x{wall['before'] / wall['after']:.2f}"
    )
    before, after = results["before"], results["after"]
    same = before.metrics == after.metrics and before.uncertainty == after.uncertainty
    for name, array in before.per_letter.items():
        same &= np.array_equal(array, after.per_letter[name], equal_nan=array.dtype.kind == "f")
    print(f"same metrics and per-letter arrays bit for bit: {same}")
    # Since 2026-12-08 the prompts' prefix keys are laid out head by head, whose products round differently from
    # the replaced copy path: the two ways then agree to float rounding, not bit for bit.
    close = all(
        np.isclose(before.metrics[k], after.metrics[k], rtol=1e-5, atol=1e-7)
        for k in before.metrics
        if isinstance(before.metrics[k], float) and isinstance(after.metrics[k], float)
    )
    print(f"same metrics to float rounding (relative 1e-5): {close}")
    for key in ("absorption_fraction", "absorption_fraction_saebench"):
        print(f"  {key}: before {before.metrics[key]!r}, after {after.metrics[key]!r}")
    if args.saebench_ratio:
        expected = args.saebench_ratio * cpu["before"] / cpu["after"]
        print(f"SAEBench CPU / cold CPU: {args.saebench_ratio:.2f} before, {expected:.2f} expected now")


@contextmanager
def _nothing():
    yield


if __name__ == "__main__":
    main()
