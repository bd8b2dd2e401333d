"""`bench_eval.py --shape NAME`: saehealth's pass vs SAELens `run_evals` vs the arithmetic floor at a real model shape.

Random weights at the real sizes (GPT-2 small: 12 layers, d_model 768, vocabulary 50,257; a Gemma-2-2B-like
model), random token ids with BOS first, a random TopK SAE (24,576 latents by default) at the middle layer's
`hook_resid_post`. One process, the same batches for everyone, runs interleaved (saehealth, SAELens, the floor's
parts) `--repeats` times after a warm-up; medians. Each pass's fixed costs (the zero ablation's continuation and
logits, once per pass; the reference sequence) are timed apart, so the per-token figure is the marginal one.

The floor is what any exact evaluation must compute: the clean forward, one continuation from the SAE's hook,
the unembedding and softmax of two variants (clean and spliced: the zero ablation at a residual hook is the same
for every sequence, so computed once), and the SAE's encode/decode.
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


def shape_model(shape: str, device: str):
    """A HookedTransformer of that shape with random weights (seed 0) and the built-in tokenizer (its BOS/EOS/PAD
    ids mark special tokens; token ids span the shape's own vocabulary)."""
    from transformer_lens import HookedTransformerConfig

    from saehealth import builtin
    from saehealth.models import _hooked_transformer

    fields, hook = SHAPES[shape]
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
    """Seconds of each part of saehealth's pass over `batches`, run one by one as the pass runs them."""
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
        timed("unembed_softmax", lambda c=clean, t=tokens, m=mask, f=finals: downstream_totals(unembedding, c, f, t, m))
        timed("accumulators", lambda c=clean, m=mask, f=final: last_position_kl(unembedding, c, zero, [f], m))
    # What the scorer adds to a bare encode/decode (sparsity and SAEBench sums), and what examples add to that.
    if collecting is not None:
        parts["latent_examples"] -= parts["latent_statistics"]
    parts["latent_statistics"] -= parts["sae_encode_decode"]
    return parts


def compare_at_shape(args) -> dict:
    """Interleaved medians: saehealth's pass, SAELens run_evals, and the profile's parts (the floor's sum)."""
    from saehealth.crosscheck import saelens_run_evals
    from saehealth.replay import splice_site
    from saehealth.scoring import score_batches

    model, hook = shape_model(args.shape, args.device)
    sae = random_topk_sae(model, hook, args.d_sae if args.d_sae != 1024 else 24576)
    site = splice_site(hook)
    batches = random_batches(model, args.tokens, args.batch_size)
    n_tokens = sum(b.numel() for b in batches)

    def ours():
        score_batches(model, [(site, sae)], batches, device=args.device, examples=args.examples)

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

    ours(), theirs()  # warm-up
    runs: dict[str, list[float]] = {"saehealth": [], "saelens": []}
    profiles: list[dict[str, float]] = []
    for _ in range(args.repeats):
        runs["saehealth"].append(seconds(ours))
        runs["saelens"].append(seconds(theirs))
        profiles.append(profile_parts(model, sae, site, batches, args.device, args.examples, clock))
    med = {name: statistics.median(values) for name, values in runs.items()}
    profile = {name: statistics.median(p[name] for p in profiles) for name in profiles[0]}
    floor = sum(profile[name] for name in ("clean_prefix", "clean_rest", "continuation", "unembed_softmax",
                                           "sae_encode_decode"))  # fmt: skip
    marginal = med["saehealth"] - profile["fixed_zero_ablation"]
    return {
        "shape": args.shape,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "hook": hook,
        "d_sae": int(sae.cfg.d_sae),
        "tokens": n_tokens,
        "batch_size": args.batch_size,
        "examples": args.examples,
        "median_seconds": med,
        "speedup_vs_saelens": med["saelens"] / med["saehealth"],
        "speedup_vs_saelens_marginal": med["saelens"] / marginal,
        "floor_seconds": floor,
        "time_vs_floor": med["saehealth"] / floor,
        "time_vs_floor_marginal": marginal / floor,
        "profile_seconds": {name: round(value, 4) for name, value in profile.items()},
        "all_seconds": runs,
    }
