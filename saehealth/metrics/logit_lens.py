"""The logit lens of each latent: which tokens its decoder direction promotes and suppresses.

A latent's decoder row is mapped into the residual stream (directly for hooks that write to it; through
W_O for `attn.hook_z`, through W_out for `mlp.hook_post`), then through the final normalisation's linear
part and the unembedding: logits = norm(direction) @ W_U. SAEDashboard multiplies by TransformerLens' W_U,
which has the final LayerNorm's scale folded in when the model is loaded with `fold_ln`; saehealth loads
models unprocessed (as SAELens trains on them), so it applies what folding would: LayerNorm centres the
direction and multiplies it by `ln_final.w` (RMSNorm only multiplies). The normalisation's division by
the residual's norm is a positive factor per token and does not change which tokens rank first.

Hooks with no logit lens, and why: `hook_q`, `hook_k`, `hook_v`, `hook_pattern`, `hook_attn_scores`,
`mlp.hook_pre`, the normalisation hooks and the like are read by attention scores, softmax or a
nonlinearity before anything reaches the residual stream, so a decoder row there has no fixed effect on
the logits.
"""

from __future__ import annotations

import re

import torch

TOP_TOKENS = 10
_RESIDUAL_WRITERS = re.compile(
    r"^(hook_embed|hook_pos_embed|blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_out))$"
)
_HEAD_OUTPUT = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")
_MLP_OUTPUT = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")


def no_logit_lens_reason(hook_name: str) -> str | None:
    """None when decoder rows at `hook_name` have a logit lens, else why not."""
    if _RESIDUAL_WRITERS.match(hook_name) or _HEAD_OUTPUT.match(hook_name) or _MLP_OUTPUT.match(hook_name):
        return None
    return (
        f"{hook_name} does not write to the residual stream linearly (attention scores, a softmax or a "
        "nonlinearity come first), so its decoder directions have no fixed effect on the logits"
    )


def residual_directions(model, W_dec: torch.Tensor, hook_name: str, head_index: int | None = None) -> torch.Tensor:
    """Decoder rows as what they add to the residual stream: (d_sae, d_model)."""
    W_dec = W_dec.detach().float()
    if match := _HEAD_OUTPUT.match(hook_name):
        W_O = model.blocks[int(match.group(1))].attn.W_O.detach().float()  # (n_heads, d_head, d_model)
        if head_index is not None:
            return W_dec @ W_O[head_index]
        n_heads, d_head, _ = W_O.shape
        return torch.einsum("lhd,hdm->lm", W_dec.reshape(-1, n_heads, d_head), W_O)
    if match := _MLP_OUTPUT.match(hook_name):
        return W_dec @ model.blocks[int(match.group(1))].mlp.W_out.detach().float()
    return W_dec


def final_norm(model, directions: torch.Tensor) -> torch.Tensor:
    """The final normalisation's linear part applied to residual directions (see the module docstring)."""
    kind = model.cfg.normalization_type
    if kind in ("LN", "LNPre"):
        directions = directions - directions.mean(-1, keepdim=True)
    if kind in ("LN", "RMS"):
        directions = directions * model.ln_final.w.detach().float()
    return directions


@torch.no_grad()
def logit_lens(
    model, W_dec: torch.Tensor, hook_name: str, head_index: int | None = None, top: int = TOP_TOKENS
) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """({"logit_lens_top_ids", "logit_lens_top_values", "logit_lens_bottom_ids", "logit_lens_bottom_values"},
    None), each (d_sae, top) on the CPU, ids best first; or (None, reason) at a hook with no logit lens.

    Values are the logit change per unit of the latent's activation (before the final normalisation's
    division by the residual norm). Token ids the tokenizer does not have (padding rows of W_U) are left out.
    """
    reason = no_logit_lens_reason(hook_name)
    if reason is not None:
        return None, reason
    W_U = model.W_U.detach().float()  # (d_model, d_vocab)
    vocab = W_U.shape[1]
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        vocab = min(vocab, len(tokenizer))
    W_U = W_U[:, :vocab]
    top = min(top, vocab)
    directions = final_norm(model, residual_directions(model, W_dec.to(W_U.device), hook_name, head_index))
    chunk = max(1, 2**24 // vocab)  # ~64 MiB of logits at a time, whatever the width
    parts: dict[str, list[torch.Tensor]] = {"top": [], "bottom": []}
    for start in range(0, directions.shape[0], chunk):
        logits = directions[start : start + chunk] @ W_U
        parts["top"].append(logits.topk(top, dim=1))
        parts["bottom"].append(logits.topk(top, dim=1, largest=False))
    arrays = {}
    for side, results in parts.items():
        arrays[f"logit_lens_{side}_ids"] = torch.cat([r.indices for r in results]).cpu()
        arrays[f"logit_lens_{side}_values"] = torch.cat([r.values for r in results]).cpu()
    return arrays, None
