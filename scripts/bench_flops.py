"""The arithmetic of `bench_eval.py --shape`: multiply-adds per token of an exact evaluation (the floor) and of
SAELens `run_evals`, from the model's and the SAE's shapes alone.

Counted: the matrix products (attention projections, the causal attention's scores and weighted sums at the mean
attended length, the MLP, the unembedding, the SAE's encoder and decoder); not counted: norms, activations,
softmaxes, the KL/CE arithmetic (memory-bound, a few per cent of the products at these widths, paid by both).

- The floor (what any exact pass must compute per token): the clean forward (every block, no unembedding
  needed beyond the next line), one continuation from the SAE's hook (the blocks after it), the unembedding of two
  variants (clean and spliced: the zero ablation at a residual hook holds no token, so its logits are computed
  once per pass), the SAE's encoder, and its decoder on the k active latents (a TopK SAE's decode reads k rows).
- SAELens `run_evals` (its reconstruction and sparsity/variance groups, as `get_eval_everything_config`): three
  whole forwards with their unembeddings (clean, spliced, zero-ablated), one more forward up to the hook's block
  for the sparsity/variance group, and the SAE twice (in the splice and in that group), each a dense decode.
"""

from __future__ import annotations


def layer_macs(cfg, context: int) -> float:
    """Multiply-adds per token of one transformer block at this context length."""
    heads, kv_heads = cfg.n_heads, cfg.n_key_value_heads or cfg.n_heads
    projections = cfg.d_model * cfg.d_head * (2 * heads + 2 * kv_heads)  # Q, O; K, V
    attention = 2 * heads * cfg.d_head * (context + 1) / 2  # scores and weighted sum over the mean causal length
    mlp = (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_mlp
    return projections + attention + mlp


def pass_macs(cfg, context: int, resume_at: int, d_in: int, d_sae: int, k: int) -> dict[str, float]:
    """Per-token multiply-adds: each part of the floor, the floor's sum, SAELens run_evals', and their ratio
    (the most an exact pass can be faster than SAELens by arithmetic alone)."""
    block = layer_macs(cfg, context)
    unembed = cfg.d_model * cfg.d_vocab_out
    encode, dense_decode, sparse_decode = d_in * d_sae, d_sae * d_in, k * d_in
    parts = {
        "clean_forward": cfg.n_layers * block,
        "continuation": (cfg.n_layers - resume_at) * block,
        "unembed_two_variants": 2 * unembed,
        "sae_encode": encode,
        "sae_decode_active": sparse_decode,
    }
    floor = sum(parts.values())
    saelens = 3 * (cfg.n_layers * block + unembed) + resume_at * block + 2 * (encode + dense_decode)
    return {**parts, "floor": floor, "saelens_run_evals": saelens, "saelens_over_floor": saelens / floor}
