#!/usr/bin/env python
"""Benchmark: `saehealth eval --activations` on minSAE caches of growing size: peak memory and throughput.

    python scripts/bench_activations.py [--tokens 100000 1000000] [--d-in 128] [--dtype float16] [--shard-tokens 131072]

For each size a minSAE-layout cache of random activations (shards of --shard-tokens tokens, sequences of 128) is
written to a temporary folder, and a fresh process evaluates a random TopK SAE (d_sae = 8 × d_in, k 64) on it,
reporting its peak RSS and tokens/s. Target: peak memory does not grow with the cache's size (it is one batch
plus the accumulators, whatever the number of shards).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CONTEXT = 128


def write_cache(folder: Path, n_tokens: int, d_in: int, dtype: str, shard_tokens: int) -> None:
    """minSAE's layout (see saehealth/activations/minsae.py) filled with random activations."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    shard_tokens -= shard_tokens % CONTEXT  # minSAE's shards hold whole sequences
    n_tokens -= n_tokens % CONTEXT
    for i, start in enumerate(range(0, n_tokens, shard_tokens)):
        rows = min(shard_tokens, n_tokens - start)
        acts = (torch.randn(rows, d_in, generator=gen) + 1.0).to(getattr(torch, dtype))
        save_file({"activations": acts}, str(folder / f"shard_{i:05d}.safetensors"))
    meta = {"model_name": "bench", "layer_idx": 0, "activation_dim": d_in, "context_length": CONTEXT}
    (folder / "metadata.json").write_text(json.dumps(meta))


def child(cache: str, sae: str) -> None:
    import saehealth

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = saehealth.evaluate(sae, activations=cache, out=out, skip=("geometry",))
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "tokens": result.eval.n_tokens,
                "seconds": round(seconds, 2),
                "tokens_per_second": round(result.eval.n_tokens / result.timing["replay_s"]),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--d-in", type=int, default=128)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    parser.add_argument("--shard-tokens", type=int, default=131_072)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    from sae_lens import TopKSAE, TopKSAEConfig

    with tempfile.TemporaryDirectory() as tmp:
        sae = Path(tmp) / "sae"
        cfg = TopKSAEConfig(d_in=args.d_in, d_sae=8 * args.d_in, k=64)
        cfg.metadata.hook_name = "blocks.0.hook_mlp_out"  # minSAE's hook
        TopKSAE(cfg).save_model(sae)
        reports = []
        for n_tokens in args.tokens:
            cache = Path(tmp) / f"cache_{n_tokens}"
            write_cache(cache, n_tokens, args.d_in, args.dtype, args.shard_tokens)
            run = subprocess.run(
                [sys.executable, __file__, "--child", str(cache), str(sae)], capture_output=True, text=True, check=True
            )
            reports.append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(reports[-1], flush=True)
    print(json.dumps({"d_in": args.d_in, "dtype": args.dtype, "runs": reports}, indent=2))


if __name__ == "__main__":
    main()
