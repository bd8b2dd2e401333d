#!/usr/bin/env python
"""Benchmark: the cost of the diagnostics beyond the averages on the one pass (docs/diagnostics.md).

    python scripts/bench_diagnostics.py [--tokens 32768] [--d-sae 4096] [--saes 2] [--repeats 5] [--threads 2]

Three variants of `scoring.score_batches` on identical token batches of the built-in model, alternating
`--repeats` times after a warm-up (medians; wall and process CPU time, the latter steadier on a shared machine):

- `plain`: no diagnostics (`diagnostics=False, agreement=False`);
- `diagnostics`: items 1, 3, 5, 6 (by position, paired per-sequence totals, dense-latent kinds, token-explained
  sums) — the issue's target is below 10% over plain;
- `all`: those plus item 2's next-token agreement (top-5 of every spliced and clean logits tile);
- `pathological`: all that plus the random-perturbation continuation per SAE (what `--skip pathological` saves);
- `replace_all`: the whole replacement's own loop over the batches (`--replace-all`), timed against `plain`.

`--saes` random TopK SAEs (d_in 128, `--d-sae` latents, k 64) at the middle residual stream share the pass, as in
`compare` (the paired totals only exist with two or more).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import saehealth  # noqa: E402
from saehealth.loading import load_sae  # noqa: E402
from saehealth.replace_all import replace_all_metrics  # noqa: E402
from saehealth.replay import splice_site  # noqa: E402
from saehealth.scoring import score_batches  # noqa: E402
from scripts.bench_eval import HOOK, token_batches  # noqa: E402

VARIANTS = {
    "plain": {"diagnostics": False, "agreement": False},
    "diagnostics": {"diagnostics": True, "agreement": False},
    "all": {"diagnostics": True, "agreement": True},
    "pathological": {"diagnostics": True, "agreement": True, "pathological": True},
}


def random_topk_sae(folder: Path, d_sae: int, seed: int) -> Path:
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    cfg = TopKSAEConfig(d_in=128, d_sae=d_sae, k=64)
    cfg.metadata.model_name = saehealth.BUILTIN_MODEL
    cfg.metadata.hook_name = HOOK
    TopKSAE(cfg).save_model(folder)
    return folder


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = saehealth.load_model(saehealth.BUILTIN_MODEL, device="cpu")
    root = Path(tempfile.mkdtemp())
    saes = [load_sae(random_topk_sae(root / f"sae{i}", args.d_sae, i)) for i in range(args.saes)]
    members = [(splice_site(HOOK), sae) for sae in saes]
    batches = token_batches(model, args.tokens, args.batch_size)

    def once(options: dict) -> None:
        if options.get("replace_all"):
            replace_all_metrics(model, members, batches)
        else:
            score_batches(model, members, batches, **options)

    variants = {**VARIANTS, "replace_all": {"replace_all": True}}
    for options in variants.values():  # warm-up
        once(options)
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, options in variants.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            once(options)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    fastest = {k: min(v) for k, v in wall.items()}
    return {
        "threads": torch.get_num_threads(),
        "tokens": sum(b.numel() for b in batches),
        "saes": args.saes,
        "d_sae": args.d_sae,
        "median_seconds": med,
        "median_cpu_seconds": med_cpu,
        "diagnostics_over_plain": med["diagnostics"] / med["plain"] - 1,
        "diagnostics_over_plain_cpu": med_cpu["diagnostics"] / med_cpu["plain"] - 1,
        "diagnostics_over_plain_fastest": fastest["diagnostics"] / fastest["plain"] - 1,
        "agreement_over_diagnostics": med["all"] / med["diagnostics"] - 1,
        "agreement_over_diagnostics_cpu": med_cpu["all"] / med_cpu["diagnostics"] - 1,
        "pathological_over_all": med["pathological"] / med["all"] - 1,
        "pathological_over_all_cpu": med_cpu["pathological"] / med_cpu["all"] - 1,
        "replace_all_over_plain_pass": med["replace_all"] / med["plain"],
        "replace_all_over_plain_pass_cpu": med_cpu["replace_all"] / med_cpu["plain"],
        "all_seconds": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=32_768)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--saes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
