"""`bench_eval.py --shape NAME`: saehealth's pass vs SAELens `run_evals` vs the arithmetic floor at a real model shape.

Random weights at the real sizes (GPT-2 small: 12 layers, d_model 768, vocabulary 50,257; a Gemma-2-2B-like
model, `--layers` to keep fewer of its 26 blocks), random token ids with BOS first, a random TopK SAE (24,576
latents by default) at the middle layer's `hook_resid_post`. One process, the same batches for everyone, runs
interleaved `--repeats` times after a warm-up; medians. Each pass's fixed costs (the zero ablation's continuation
and logits, once per pass) are timed apart, so the per-token figure is the marginal one.

What each side computes (printed ratios are for both saehealth modes):
- SAELens `run_evals` with `get_eval_everything_config`: CE clean/spliced/zero-ablated, loss recovered, KL,
  explained variance, MSE, cosine, L2 ratio, L0, L1, feature density, weight statistics.
- `saehealth_same_as_saelens`: the same metrics (reconstruction, sparsity, CE/KL, SAEBench's sums) and nothing
  else: no latent examples, no by-position sums, no dense-latent kinds or token-explained shares, no next-token
  agreement, no pathological check.
- `saehealth_defaults`: the pass as `saehealth eval` runs it: all of those, latent examples (`--examples`), and
  the pathological check, which splices one more continuation per batch.

Two floors: the profile's (the measured time of the floor's parts as saehealth computes them) and the arithmetic
one (bench_flops.py: the floor's multiply-adds at this machine's measured matrix-product rate); beside it, SAELens'
multiply-adds over the floor's, the most an exact pass can gain over SAELens by arithmetic.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

SHAPES = {
    # name: (HookedTransformerConfig fields, SAE hook)
    "gpt2-small": (
        {"n_layers": 12, "d_model": 768, "n_heads": 12, "d_head": 64, "d_mlp": 3072, "n_ctx": 1024,
         "d_vocab": 50257, "act_fn": "gelu_new", "normalization_type": "LN"},
        "blocks.6.hook_resid_post",
    ),
    # Gemma-2-2B's widths, vocabulary and soft caps; 2.6B parameters in float32 (10.4 GB): fits a 24 GiB device.
    "gemma-2-2b-like": (
        {"n_layers": 26, "d_model": 2304, "n_heads": 8, "d_head": 256, "d_mlp": 9216, "n_ctx": 1024,
         "d_vocab": 256000, "act_fn": "gelu_pytorch_tanh", "normalization_type": "RMS", "gated_mlp": True,
         "positional_embedding_type": "rotary", "n_key_value_heads": 4, "attn_scores_soft_cap": 50.0,
         "output_logits_soft_cap": 30.0, "use_normalization_before_and_after": True, "final_rms": True},
        "blocks.12.hook_resid_post",
    ),
}  # fmt: skip


def shape_model(shape: str, device: str, layers: int | None = None):
    """A HookedTransformer of that shape with random weights (seed 0) and the built-in tokenizer (its BOS/EOS/PAD
    ids mark special tokens; token ids span the shape's own vocabulary). `layers`: fewer blocks (the widths and
    vocabulary kept), the SAE then at the middle block's `hook_resid_post`; the hook."""
    from transformer_lens import HookedTransformerConfig

    from saehealth import builtin
    from saehealth.models import _hooked_transformer

    fields, hook = SHAPES[shape]
    if layers is not None:
        fields, hook = {**fields, "n_layers": layers}, f"blocks.{layers // 2}.hook_resid_post"
    cfg = HookedTransformerConfig(**fields, device=device, seed=0)
    model = _hooked_transformer()(cfg, tokenizer=builtin.load_builtin_tokenizer())
    return model.eval(), hook


def random_batches(model, n_tokens: int, batch_size: int, context: int = 128) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n_sequences = max(1, n_tokens // context)
    tokens = torch.randint(0, model.cfg.d_vocab, (n_sequences, context), generator=g)
    tokens[:, 0] = model.tokenizer.bos_token_id
    return [tokens[i : i + batch_size].to(model.cfg.device) for i in range(0, n_sequences, batch_size)]


def random_topk_sae(model, hook: str, d_sae: int, k: int = 64):
    from sae_lens import TopKSAE, TopKSAEConfig

    cfg = TopKSAEConfig(d_in=model.cfg.d_model, d_sae=d_sae, k=k, device=str(model.cfg.device))
    cfg.metadata.hook_name = hook
    folder = Path(tempfile.mkdtemp()) / "sae"
    TopKSAE(cfg).save_model(folder)
    from saehealth.loading import load_sae

    return load_sae(folder, device=str(model.cfg.device))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def profile_parts(model, sae, site, batches, device: str, examples: int, clock=time.perf_counter) -> dict[str, float]:
    """Seconds of each part of saehealth's pass over `batches`, run one by one as the pass runs them (GPT-2's
    GELU fused, as in the pass: saehealth/fused_gelu.py)."""
    from saehealth.fused_gelu import fused_gelu

    with fused_gelu(model):
        return _profile_parts(model, sae, site, batches, device, examples, clock)


def _profile_parts(model, sae, site, batches, device: str, examples: int, clock) -> dict[str, float]:
    from saehealth.data import special_token_mask
    from saehealth.metrics.downstream import SiteFinals, _cached_zero, downstream_totals
    from saehealth.replay import _final, _ln_final, readout
    from saehealth.sae_scorer import SAEScorer
    from saehealth.saebench.sums import last_position_kl

    layer = site.resume_at
    parts = dict.fromkeys(
        ["clean_prefix", "clean_rest", "sae_encode_decode", "latent_statistics", "latent_examples", "continuation",
         "unembed_softmax", "accumulators", "fixed_zero_ablation"], 0.0)  # fmt: skip
    unembedding = readout(model)
    plain, collecting = SAEScorer(sae, device, 0), SAEScorer(sae, device, examples) if examples else None

    def timed(name, fn):
        _sync(device)
        start = clock()
        value = fn()
        _sync(device)
        parts[name] += clock() - start
        return value

    zero = timed("fixed_zero_ablation", lambda: _final(model, torch.zeros_like(model.embed(batches[0][:1])), layer))
    key, depth = ("residual", layer), model.cfg.n_layers
    for index, tokens in enumerate(batches):
        mask = special_token_mask(tokens, model.tokenizer)
        ids = torch.arange(tokens.shape[0]) + index * tokens.shape[0]
        x = timed("clean_prefix", lambda t=tokens: model(t, stop_at_layer=layer))
        clean = timed("clean_rest", lambda x=x: _ln_final(model, model(x, start_at_layer=layer, stop_at_layer=depth)))
        timed("sae_encode_decode", lambda x=x: sae.decode(sae.encode(x.reshape(-1, x.shape[-1]))))
        plain.begin(ids)
        x_hat = timed("latent_statistics", lambda x=x, m=mask: plain.reconstruct(x, m))
        if collecting is not None:
            collecting.begin(ids)
            timed("latent_examples", lambda x=x, m=mask: collecting.reconstruct(x, m))
        spliced = torch.where(mask[..., None], x_hat, x)
        final = timed("continuation", lambda s=spliced: _final(model, s, layer))
        finals = [SiteFinals(zero, key, [final])]
        if index == 0:  # the zero ablation's logits are computed once per pass: a fixed cost
            timed("fixed_zero_ablation", lambda: _cached_zero(unembedding, zero[:, :-1], key))
        timed(
            "unembed_softmax",
            lambda c=clean, t=tokens, m=mask, f=finals: downstream_totals(unembedding, c, f, t, m, agreement=False),
        )
        timed("accumulators", lambda c=clean, m=mask, f=final: last_position_kl(unembedding, c, zero, [f], m))
    # What the scorer adds to a bare encode/decode (sparsity and SAEBench sums), and what examples add to that.
    if collecting is not None:
        parts["latent_examples"] -= parts["latent_statistics"]
    parts["latent_statistics"] -= parts["sae_encode_decode"]
    return parts


def compare_at_shape(args) -> dict:
    """Interleaved medians: saehealth's pass computing what SAELens computes, saehealth's pass as `eval` runs it,
    SAELens run_evals, and the profile's parts (the floor's sum); beside them the arithmetic (bench_flops.py)."""
    from bench_flops import pass_macs

    from saehealth.crosscheck import saelens_run_evals
    from saehealth.replay import splice_site
    from saehealth.scoring import score_batches

    model, hook = shape_model(args.shape, args.device, args.layers)
    sae = random_topk_sae(model, hook, args.d_sae if args.d_sae != 1024 else 24576)
    site = splice_site(hook)
    batches = random_batches(model, args.tokens, args.batch_size)
    n_tokens = sum(b.numel() for b in batches)

    # What each side computes. SAELens (get_eval_everything_config): CE clean/spliced/zero, loss recovered, KL,
    # explained variance, MSE, cosine, L2 ratio, L0, L1, feature density, weight statistics.
    # "same_as_saelens": saehealth's reconstruction, sparsity, downstream and SAEBench sums, nothing beyond.
    # "defaults": as `saehealth eval` runs (latent examples, by-position sums, dense-latent kinds, token-explained
    # shares, next-token agreement, and the pathological check's extra continuation per batch).
    modes = {
        "saehealth_same_as_saelens": dict(examples=0, diagnostics=False, agreement=False, pathological=False),
        "saehealth_defaults": dict(examples=args.examples, diagnostics=True, agreement=True, pathological=True),
    }

    def runner(switches):
        return lambda: score_batches(model, [(site, sae)], batches, device=args.device, **switches)

    def theirs():
        saelens_run_evals(model, sae, batches)

    # Wall time on a quiet machine; on a busy one, --threads 1 --clock cpu: the process's CPU time is the work
    # done, whatever else runs.
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    def seconds(fn) -> float:
        _sync(args.device)
        start = clock()
        fn()
        _sync(args.device)
        return clock() - start

    runs = {name: runner(switches) for name, switches in modes.items()} | {"saelens": theirs}
    for fn in runs.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    profiles: list[dict[str, float]] = []
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(seconds(fn))
        profiles.append(profile_parts(model, sae, site, batches, args.device, args.examples, clock))
    med = {name: statistics.median(values) for name, values in times.items()}
    profile = {name: statistics.median(p[name] for p in profiles) for name in profiles[0]}
    floor = sum(profile[name] for name in ("clean_prefix", "clean_rest", "continuation", "unembed_softmax",
                                           "sae_encode_decode"))  # fmt: skip
    context = batches[0].shape[1]
    macs = pass_macs(model.cfg, context, site.resume_at, int(sae.cfg.d_in), int(sae.cfg.d_sae), int(sae.cfg.k))
    rate = gemm_rate(model, clock, args.device)
    arithmetic_floor = 2 * macs["floor"] * n_tokens / rate
    report = {
        "shape": args.shape,
        "n_layers": model.cfg.n_layers,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "hook": hook,
        "d_sae": int(sae.cfg.d_sae),
        "tokens": n_tokens,
        "batch_size": args.batch_size,
        "examples": args.examples,
        "median_seconds": med,
        "flops_per_token": {name: 2 * value for name, value in macs.items() if name != "saelens_over_floor"},
        "saelens_flops_over_floor_flops": macs["saelens_over_floor"],
        "gemm_gflops": rate / 1e9,
        "arithmetic_floor_seconds": arithmetic_floor,
        "profile_floor_seconds": floor,
        "profile_seconds": {name: round(value, 4) for name, value in profile.items()},
        "all_seconds": times,
    }
    for name in modes:
        marginal = med[name] - profile["fixed_zero_ablation"]
        report[name] = {
            "saelens_over_saehealth": med["saelens"] / med[name],
            "saelens_over_saehealth_marginal": med["saelens"] / marginal,
            "saehealth_over_arithmetic_floor": med[name] / arithmetic_floor,
            "saehealth_over_profile_floor": med[name] / floor,
            "saehealth_over_profile_floor_marginal": marginal / floor,
        }
    return report


def gemm_rate(model, clock, device: str, repeats: int = 7) -> float:
    """FLOP/s of this machine's matrix products at the model's widths: the unembedding of one tile of positions as
    the pass unembeds them (the floor's largest product at a real vocabulary; `downstream.tile_rows`), the fastest
    of `repeats` after a warm-up, on the benchmark's clock. The fastest, because on a shared machine it is the least
    disturbed: the floor is then a lower bound."""
    from saehealth.metrics.downstream import tile_rows

    rows = tile_rows(model.cfg.d_vocab_out, device)
    x = torch.randn(rows, model.cfg.d_model, device=device)
    w = model.unembed.W_U.detach()
    times = []
    for i in range(repeats + 1):
        _sync(device)
        start = clock()
        x @ w
        _sync(device)
        if i:
            times.append(clock() - start)
    return 2 * rows * w.shape[0] * w.shape[1] / min(times)
