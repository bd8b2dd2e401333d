#!/usr/bin/env python
"""Time the first-letter absorption metric on the built-in model, one row per SAE width and estimator set.

    python scripts/bench_absorption.py [--d-sae 1024,65536] [--k 32] [--threads 1] [--splits 5] [--repeats 1]
    python scripts/bench_absorption.py --sae-path checkpoints/demo --min-letters 10 --repeats 3

With --sae-path the SAE is that checkpoint (at its own hook) instead of fitted ones.

For each width, fits a TopK SAE (d_in 128) on the built-in corpus's activations at the hook (not part
of the metric; decoder rows start at data points, so a few hundred Adam steps give a usable dictionary),
then runs `measure_absorption` twice with one cache folder: cold (prompts the model, trains the letter
probes, writes the cache) and warm (reads the cache; only the SAE-level k-sparse probing and absorption
run). Each is timed twice, interleaved: the headline schedule alone (`converged`) and with SAEBench's schedule
beside it over the same splits (the default), so the cost of the second estimator is a ratio of two runs side by
side; with --repeats N the rows repeat and the last line gives the medians. Prints wall and CPU seconds cold and
warm, and the metrics with their standard errors.
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
    """Adam on MSE for a TopK SAE; returns a sae_lens TopKSAE holding the fitted weights and its FVU."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig

    gen = torch.Generator().manual_seed(seed)
    d_in = acts.shape[1]
    start = acts[torch.randint(0, len(acts), (d_sae,), generator=gen)] - acts.mean(0)
    w_dec = torch.nn.functional.normalize(start, dim=1).requires_grad_()
    w_enc = (w_dec.detach().T / k).requires_grad_()  # k aligned latents at first: keep their sum near x
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
    parser.add_argument("--d-sae", default="1024,65536", help="comma-separated widths, one row each")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, default=None, help="Adam steps fitting each SAE (default 300 at d_sae 1,024, fewer wider)"
    )
    parser.add_argument("--sequences", type=int, default=256)
    parser.add_argument("--splits", type=int, default=None, help="word splits (default: the metric's default)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats (medians printed when > 1)")
    parser.add_argument("--sae-path", default=None, help="time this checkpoint instead of fitted SAEs")
    parser.add_argument("--min-letters", type=int, default=20, help="letters needed (the demo SAE: 10)")
    args = parser.parse_args()

    import numpy as np
    import torch

    import saehealth
    from saehealth.absorption import AbsorptionSettings, measure_absorption

    if args.threads:
        torch.set_num_threads(args.threads)
    splits = {"min_letters": args.min_letters} | ({} if args.splits is None else {"n_splits": args.splits})
    variants = {"converged only": {"saebench_too": False}, "both schedules": {}}
    model = saehealth.load_model(saehealth.BUILTIN_MODEL)
    print(f"torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}, {args.repeats} interleaved repeat(s)")
    print("d_sae   estimators      cold wall/cpu s  warm wall/cpu s  absorption (converged)  (saebench-0.6)  letters")
    for d_sae, sae, hook in _saes(args, model):
        cold: dict[str, list[float]] = {name: [] for name in variants}
        cold_cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, extra in variants.items():
                settings = AbsorptionSettings(**splits, **extra)
                times = []
                with tempfile.TemporaryDirectory() as cache_dir:
                    for _ in ("cold", "warm"):
                        cpu = time.process_time()
                        result = measure_absorption(model, sae, hook, cache_dir=Path(cache_dir), settings=settings)
                        times.append((result.seconds, time.process_time() - cpu))
                cold[name].append(times[0][0])
                cold_cpu[name].append(times[0][1])
                print(
                    f"{d_sae:<7d} {name:<15} {times[0][0]:6.1f}/{times[0][1]:5.1f}     {times[1][0]:6.1f}/{times[1][1]:5.1f}"
                    f"     {_shown(result, 'absorption_fraction'):<22}  {_shown(result, 'absorption_fraction_saebench'):<14}"
                    f"  {result.metrics['absorption_letters_scored']}",
                    flush=True,
                )
        for kind, spent in (("wall", cold), ("CPU", cold_cpu)):
            base, both = np.median(spent["converged only"]), np.median(spent["both schedules"])
            print(f"{d_sae:<7d} median cold {kind}: converged only {base:.1f} s, both {both:.1f} s: x{both / base:.2f}")


def _saes(args, model):
    """(d_sae, SAE, hook) to time: the checkpoint given, or TopK SAEs fitted at each width."""
    import saehealth

    if args.sae_path:
        sae = saehealth.load_sae(args.sae_path)
        yield sae.cfg.d_sae, sae, sae.cfg.metadata.hook_name
        return
    acts = hook_activations(model, args.hook, args.sequences)
    for d_sae in (int(w) for w in args.d_sae.split(",")):
        steps = args.steps if args.steps is not None else max(30, 300 * 1024 // d_sae)  # a wide step is slow
        sae, fvu = fit_topk_sae(acts, d_sae, args.k, steps)
        print(f"fitted d_sae {d_sae} k {args.k} in {steps} steps: FVU {fvu:.3f}", flush=True)
        yield d_sae, sae, args.hook


def _shown(result, key: str) -> str:
    value = result.metrics.get(key)
    if value is None:
        return "not measured"
    return f"{value:.3f} ± {result.uncertainty.get(key, float('nan')):.3f}"


if __name__ == "__main__":
    main()
