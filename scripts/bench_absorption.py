#!/usr/bin/env python
"""Time the first-letter absorption metric on the built-in model with a demo-size SAE.

    python scripts/bench_absorption.py [--hook blocks.0.hook_resid_post] [--d-sae 1024] [--k 32] [--threads N]

Fits a TopK SAE (d_in 128, d_sae 1024) on the built-in corpus's activations at the hook (not timed as
part of the metric), then runs `measure_absorption` twice with one cache folder: cold (prompts the
model, trains the ground-truth probes, writes the cache) and warm (reads the cache; only the SAE-level
k-sparse probing and absorption run). Prints the phase times and the metric values.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def hook_activations(model, hook_name: str, n_sequences: int):
    """Activations at the hook over built-in corpus text (BOS positions dropped)."""
    import torch

    import saehealth
    from saehealth.data import sequence_batches

    dataset = saehealth.load_dataset(saehealth.BUILTIN_DATASET, "train")
    layer = int(hook_name.split(".")[1])
    chunks = []
    for batch in sequence_batches(dataset, model.tokenizer, model.cfg.n_ctx, n_sequences, batch_size=32, seed=0):
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=hook_name, stop_at_layer=layer + 1)
        chunks.append(cache[hook_name][batch != model.tokenizer.bos_token_id])
    return torch.cat(chunks)


def fit_topk_sae(acts, d_sae: int, k: int, steps: int, seed: int = 0):
    """Adam on MSE for a TopK SAE; returns a sae_lens TopKSAE holding the fitted weights."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    gen = torch.Generator().manual_seed(seed)
    d_in = acts.shape[1]
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=gen), dim=1).requires_grad_()
    w_enc = w_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = acts.mean(0).clone().requires_grad_()
    optimizer = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=2e-3)
    for _ in range(steps):
        x = acts[torch.randint(0, len(acts), (1024,), generator=gen)]
        pre = (x - b_dec) @ w_enc + b_enc
        top, idx = pre.topk(k, dim=-1)
        latents = torch.zeros_like(pre).scatter(-1, idx, torch.relu(top))
        loss = (latents @ w_dec + b_dec - x).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    fvu = loss.item() / (acts - acts.mean(0)).pow(2).sum(-1).mean().item()
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k))
    sae.load_state_dict({"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec})
    return sae, fvu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hook", default="blocks.0.hook_resid_post")
    parser.add_argument("--d-sae", type=int, default=1024)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary folder")
    args = parser.parse_args()

    import torch

    import saehealth
    from saehealth.absorption import measure_absorption
    from saehealth.absorption.words import LETTERS

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = saehealth.load_model(saehealth.BUILTIN_MODEL)
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    acts = hook_activations(model, args.hook, args.sequences)
    sae, fvu = fit_topk_sae(acts, args.d_sae, args.k, args.steps)
    fit_s = time.perf_counter() - started
    print(
        f"model load {load_s:.1f}s; SAE fit (not part of the metric) {fit_s:.1f}s on {len(acts):,} tokens, FVU {fvu:.3f}"
    )
    print(f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}")

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        for label in ("cold cache", "warm cache"):
            result = measure_absorption(model, sae, args.hook, cache_dir=cache_dir)
            values = ", ".join(
                f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in result.metrics.items()
            )
            print(f"{label}: {result.seconds:.2f}s  {values}")
            if result.not_measured_reason:
                print(f"  not measured: {result.not_measured_reason}")
        per_letter = result.per_letter
        print("per letter (probe F1 / absorption fraction / main latents):")
        for i, letter in enumerate(LETTERS):
            main = [int(j) for j in per_letter["main_latents"][i] if j >= 0]
            print(f"  {letter}  {per_letter['probe_f1'][i]:.2f}  {per_letter['absorption_fraction'][i]:.3f}  {main}")


if __name__ == "__main__":
    main()
