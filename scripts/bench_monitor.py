"""What a HealthMonitor check costs against a fresh `saehealth.evaluate` of the same SAE on the same tokens.

Both score the same SAE object on the same held-out tokens of the built-in model, interleaved in one process
(medians over repeats, so a busy machine slows both alike). The check reuses the clean side computed once when
the monitor was built; the evaluation runs it again, with geometry, latent examples and (unless skipped)
absorption. Prints one table; the ratio is evaluation time / check time.

    python scripts/bench_monitor.py                      # 4,096 tokens, 3 repeats
    python scripts/bench_monitor.py --tokens 16384 --repeats 5 --absorption
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import saehealth
from saehealth.monitor import HealthMonitor, held_out_tokens

HOOK = "blocks.0.hook_resid_post"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--absorption", action="store_true", help="also time the default evaluation (absorption on)")
    args = parser.parse_args()

    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(0)
    model = saehealth.load_model(saehealth.BUILTIN_MODEL)
    sae = TopKSAE(TopKSAEConfig(d_in=model.cfg.d_model, d_sae=args.d_sae, k=32))
    tokens = held_out_tokens(model, args.tokens)
    t0 = time.perf_counter()
    monitor = HealthMonitor(model, HOOK, tokens)
    build = time.perf_counter() - t0

    variants = {
        "monitor.check": lambda: monitor.check(sae),
        "evaluate (skip absorption)": lambda: saehealth.evaluate(
            sae=sae, model=model, hook=HOOK, n_tokens=args.tokens, skip=("absorption",)
        ),
    }
    if args.absorption:
        variants["evaluate (default)"] = lambda: saehealth.evaluate(
            sae=sae, model=model, hook=HOOK, n_tokens=args.tokens
        )
    for run in variants.values():  # warm-up: first-call costs (and absorption's model-level cache) not timed
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)

    check = statistics.median(times["monitor.check"])
    print(f"{tokens.numel():,} tokens, d_sae {args.d_sae}, built-in model, {args.repeats} repeats (median seconds)")
    print(f"monitor built once in {build:.3f} s")
    print(f"{'variant':32} {'seconds':>9} {'× check':>8}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:32} {median:9.3f} {median / check:8.2f}")


if __name__ == "__main__":
    main()
