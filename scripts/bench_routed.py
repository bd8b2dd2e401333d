"""The routed pass's cost against a single-hook pass of the same shared SAE, on the built-in model (CPU).

    python scripts/bench_routed.py --tokens 8192 --repeats 5

Both passes run interleaved in one process on the same token batches; the ratio of their medians is printed. The
routed pass records both routed layers, routes, encodes each token once for the metrics, and runs two
continuations (spliced, with each routed token encoded once more on its live activation, and routed-zero); the
single-hook pass runs one spliced continuation and reuses its cached zero ablation. A third timing scores both
SAEs in one shared pass (as `saehealth compare` does: one clean forward per batch for both), set against the
sum of the two passes apart.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import saehealth
from saehealth.data import load_dataset, sequence_batches
from saehealth.loading.convert import build_sae
from saehealth.loading.signed_topk import SIGNED_TOPK
from saehealth.replay import splice_site
from saehealth.routed.passes import resolve_site
from saehealth.routed.scoring import score_routed
from saehealth.routed.spec import RouteSpec
from saehealth.scoring import score_batches

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--d-sae", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = saehealth.load_model(saehealth.BUILTIN_MODEL)
    d = model.cfg.d_model
    decoder = torch.randn(args.d_sae, d)
    decoder /= decoder.norm(dim=-1, keepdim=True)
    tensors = {"W_enc": decoder.T.clone(), "b_enc": torch.zeros(args.d_sae), "W_dec": decoder, "b_dec": torch.zeros(d)}
    config = {"d_in": d, "d_sae": args.d_sae, "k": args.k, "apply_b_dec_to_input": True}
    sae = build_sae(SIGNED_TOPK, config, tensors, device="cpu", dtype="float32", metadata={}, source="bench")
    single_sae = build_sae(SIGNED_TOPK, config, tensors, device="cpu", dtype="float32", metadata={}, source="bench")
    spec = RouteSpec(torch.randn(2, d), "sum", "hard", 1e-6, "official", "routesaes", hooks=HOOKS)
    site = resolve_site(spec, model, d)
    data = load_dataset(saehealth.BUILTIN_DATASET, "validation")
    batches = list(sequence_batches(data, model.tokenizer, 128, args.tokens // 128, 16, 0))
    times: dict[str, list[float]] = {"routed": [], "single": [], "shared": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        score_routed(model, site, sae, batches)
        times["routed"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        score_batches(model, [(splice_site(HOOKS[0]), single_sae)], batches)
        times["single"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        score_batches(model, [(site, sae), (splice_site(HOOKS[0]), single_sae)], batches)
        times["shared"].append(time.perf_counter() - t0)
    routed, single, shared = (statistics.median(times[name]) for name in ("routed", "single", "shared"))
    print(f"{args.tokens} tokens, d_sae {args.d_sae}, k {args.k}, {args.threads} thread(s), {args.repeats} repeats")
    print(f"routed pass {routed:.2f} s, single-hook pass {single:.2f} s (medians): ratio {routed / single:.2f}x")
    print(
        f"both in one shared pass {shared:.2f} s against {routed + single:.2f} s apart: ratio "
        f"{shared / (routed + single):.2f}x"
    )


if __name__ == "__main__":
    main()
