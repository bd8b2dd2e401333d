#!/usr/bin/env python
"""Benchmark: saehealth's one pass vs SAELens `run_evals` on the same tokens, in one process.

    python scripts/bench_eval.py [--sae PATH | --hook HOOK] [--tokens 50000] [--batch-size 16] [--device cpu] [--repeats 3]
    python scripts/bench_eval.py --examples-cost   # the pass with latent examples (--examples 20) vs without (0)
    python scripts/bench_eval.py --memory      # peak memory of the saehealth pass at 50k vs 1M tokens
    python scripts/bench_eval.py --shape gpt2-small --tokens 4096 --repeats 5   # a real shape (bench_shapes.py)
    python scripts/bench_eval.py --shape gemma-2-2b-like --layers 4 --tokens 256 --batch-size 2 --d-sae 16384

Both evaluate the same SAE on identical token batches with every metric on (SAELens:
`get_eval_everything_config`, the reconstruction and sparsity/variance groups each over all batches).
The runs alternate (saehealth, SAELens, 3 plain forward passes) `--repeats` times; medians are printed
with the ratios. Targets on CPU for a mid-layer residual SAE on the built-in model: saehealth ≥ 3×
SAELens' throughput and ≤ 1.2× the time of 3 plain forward passes.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import saehealth  # noqa: E402
from saehealth.crosscheck import saelens_run_evals  # noqa: E402
from saehealth.data import load_dataset, sequence_batches  # noqa: E402
from saehealth.loading import load_sae  # noqa: E402
from saehealth.replay import splice_site  # noqa: E402
from saehealth.scoring import score_batches  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_shapes import SHAPES, compare_at_shape  # noqa: E402

HOOK = "blocks.0.hook_resid_post"  # the middle of the built-in model's residual stream


def demo_size_sae(folder: Path, hook: str = HOOK, d_sae: int = 1024) -> Path:
    """A randomly initialised TopK SAE of the demo's size (d_in 128, d_sae 1024, k 64) at a d_model-wide hook:
    speed only."""
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(d_in=128, d_sae=d_sae, k=64)
    cfg.metadata.model_name = saehealth.BUILTIN_MODEL
    cfg.metadata.hook_name = hook
    TopKSAE(cfg).save_model(folder)
    return folder


def token_batches(model, n_tokens: int, batch_size: int, split: str = "train") -> list[torch.Tensor]:
    """Evaluation batches from the built-in corpus (the train split: it holds 475k tokens; speed only)."""
    dataset = load_dataset(saehealth.BUILTIN_DATASET, split)
    return list(sequence_batches(dataset, model.tokenizer, 128, max(1, n_tokens // 128), batch_size, 0))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def speed(args) -> dict:
    model = saehealth.load_model(saehealth.BUILTIN_MODEL, device=args.device)
    sae_path = Path(args.sae) if args.sae else demo_size_sae(Path(tempfile.mkdtemp()) / "sae", args.hook, args.d_sae)
    sae = load_sae(sae_path, device=args.device)
    site = splice_site(sae.cfg.metadata.hook_name)
    batches = [b.to(args.device) for b in token_batches(model, args.tokens, args.batch_size)]
    n_tokens = sum(b.numel() for b in batches)

    def ours():
        score_batches(model, [(site, sae)], batches, device=args.device, examples=args.examples)

    def theirs():
        saelens_run_evals(model, sae, batches)

    @torch.no_grad()
    def three_forwards():
        for _ in range(3):
            for b in batches:
                model(b)

    ours(), theirs(), three_forwards()  # warm-up
    times: dict[str, list[float]] = {"saehealth": [], "saelens": [], "forward_x3": []}
    for _ in range(args.repeats):
        times["saehealth"].append(timed(ours))
        times["saelens"].append(timed(theirs))
        times["forward_x3"].append(timed(three_forwards))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": args.device,
        "hook": sae.cfg.metadata.hook_name,
        "tokens": n_tokens,
        "batch_size": args.batch_size,
        "saehealth_tokens_per_s": n_tokens / med["saehealth"],
        "saelens_tokens_per_s": n_tokens / med["saelens"],
        "speedup_vs_saelens": med["saelens"] / med["saehealth"],
        "time_vs_3_forward_passes": med["saehealth"] / med["forward_x3"],
        "median_seconds": med,
    }


def examples_cost(args) -> dict:
    """The pass with `--examples` latent examples collected vs without (examples 0), alternating."""
    model = saehealth.load_model(saehealth.BUILTIN_MODEL, device=args.device)
    sae_path = Path(args.sae) if args.sae else demo_size_sae(Path(tempfile.mkdtemp()) / "sae", args.hook, args.d_sae)
    sae = load_sae(sae_path, device=args.device)
    site = splice_site(sae.cfg.metadata.hook_name)
    batches = [b.to(args.device) for b in token_batches(model, args.tokens, args.batch_size)]
    runs = {"with_examples": args.examples, "without": 0}
    for examples in runs.values():  # warm-up
        score_batches(model, [(site, sae)], batches, device=args.device, examples=examples)
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}  # process CPU time: steadier on a shared machine
    for _ in range(args.repeats):
        for name, examples in runs.items():
            start_cpu = time.process_time()
            wall[name].append(
                timed(lambda e=examples: score_batches(model, [(site, sae)], batches, device=args.device, examples=e))
            )
            cpu[name].append(time.process_time() - start_cpu)
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "device": args.device,
        "threads": torch.get_num_threads(),
        "hook": sae.cfg.metadata.hook_name,
        "d_sae": int(sae.cfg.d_sae),
        "examples": args.examples,
        "tokens": sum(b.numel() for b in batches),
        "median_seconds": med,
        "median_cpu_seconds": med_cpu,
        "collection_share_of_pass": (med["with_examples"] - med["without"]) / med["without"],
        "collection_share_of_pass_cpu": (med_cpu["with_examples"] - med_cpu["without"]) / med_cpu["without"],
        # On a shared machine the fastest run of each is the one least disturbed.
        "collection_share_of_fastest_pass": min(wall["with_examples"]) / min(wall["without"]) - 1,
        "all_seconds": wall,
    }


def memory_child(n_tokens: int, device: str) -> None:
    """Run the saehealth pass over `n_tokens` streamed tokens and print the process's peak RSS (MiB)."""
    model = saehealth.load_model(saehealth.BUILTIN_MODEL, device=device)
    sae = load_sae(demo_size_sae(Path(tempfile.mkdtemp()) / "sae"), device=device)
    site = splice_site(HOOK)
    dataset = load_dataset(saehealth.BUILTIN_DATASET, "train")

    def stream():  # the training split, cycled, so 1M tokens are available
        produced = 0
        while produced < n_tokens:
            for batch in sequence_batches(dataset, model.tokenizer, 128, 10**9, 16, produced):
                if produced >= n_tokens:
                    return
                produced += batch.numel()
                yield batch

    score_batches(model, [(site, sae)], stream(), device=device)
    peak = {"tokens": n_tokens, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.startswith("cuda"):
        peak["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(peak))


def memory(args) -> dict:
    rows = {}
    for n in (50_000, 1_000_000):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(n), "--device", args.device],
            check=True,
            capture_output=True,
            text=True,
        )
        rows[n] = json.loads(out.stdout.strip().splitlines()[-1])
    report = {}
    for key in rows[50_000]:
        if key.startswith("peak"):
            report[f"{key}_50k"], report[f"{key}_1M"] = rows[50_000][key], rows[1_000_000][key]
            report[f"{key}_ratio"] = rows[1_000_000][key] / rows[50_000][key]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", help="SAE checkpoint (default: a random demo-size TopK SAE)")
    parser.add_argument("--hook", default=HOOK, help=f"hook of the random SAE (default {HOOK}; d_model wide)")
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=20, help="latent examples per latent in the pass (0: off)")
    parser.add_argument("--examples-cost", action="store_true", help="time the pass with --examples vs with 0")
    parser.add_argument("--d-sae", type=int, default=1024, help="width of the random TopK SAE (default 1024)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--memory", action="store_true", help="measure peak memory at 50k vs 1M tokens")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="--shape only: wall time, or process CPU time (with --threads 1 on a busy machine)",
    )
    parser.add_argument(
        "--shape",
        choices=["builtin", *SHAPES],
        default="builtin",
        help="random weights at a real model's shape, with a profile and the arithmetic floor (bench_shapes.py); "
        "--d-sae defaults to 24576 there",
    )
    parser.add_argument("--layers", type=int, help="--shape only: fewer blocks than the real model (widths kept)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.device)
        return
    if args.shape != "builtin":
        report = compare_at_shape(args)
    else:
        report = memory(args) if args.memory else examples_cost(args) if args.examples_cost else speed(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
