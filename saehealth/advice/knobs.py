"""What controls sparsity, dead latents and activation scale in each SAE architecture, in the words of the
training settings that change them.

Families:
- topk: TopK, BatchTopK, Matryoshka BatchTopK, sparsify's topk/groupmax. No sparsity penalty: L0 is k
  (BatchTopK on average; its inference threshold is learned to give k). Dead latents are revived by the
  AuxK auxiliary loss (SAELens `aux_loss_coefficient`, sparsify and dictionary_learning `auxk_alpha`).
- jumprelu: an L0 penalty (`l0_coefficient`, Gemma Scope's λ) on learned thresholds. Dead latents come
  from thresholds no pre-activation reaches; SAELens' `pre_act_loss_coefficient` adds the pre-activation
  loss that lifts them.
- l1: standard and Gated SAEs (and L1-trained transcoders): an L1 penalty (`l1_coefficient`); dead latents
  are helped by warming the penalty up (`l1_warm_up_steps`) or resampling (dictionary_learning
  `resample_steps`).
- unknown: anything else; the advice says which way to move and asks the reader to find the setting.
"""

from __future__ import annotations

from saehealth.advice.context import AdviceContext

TOPK, JUMPRELU, L1, UNKNOWN = "topk", "jumprelu", "l1", "unknown"
NAMES = {
    "topk": "TopK",
    "batchtopk": "BatchTopK",
    "matryoshka_batchtopk": "Matryoshka BatchTopK",
    "jumprelu": "JumpReLU",
    "gated": "Gated",
    "standard": "standard (L1)",
}


def family(architecture: str) -> str:
    """The sparsity family of an architecture label (see the module docstring)."""
    arch = architecture.lower()
    if "jumprelu" in arch:
        return JUMPRELU
    if "topk" in arch or arch.startswith(("groupmax", "sparsify")):
        return TOPK
    if arch.startswith(("standard", "gated")) or arch in ("transcoder", "skip_transcoder"):
        return L1
    return UNKNOWN


def name(ctx: AdviceContext) -> str:
    """The architecture as prose: 'TopK', 'JumpReLU', 'standard (L1)'."""
    return NAMES.get(ctx.architecture, ctx.architecture or "this")


def _setting(ctx: AdviceContext, key: str) -> str:
    """'`key`, now 5' when the checkpoint records it, else '`key`'."""
    value = ctx.training(key)
    return f"`{key}`, now {value:g}" if isinstance(value, (int, float)) else f"`{key}`"


def aux_setting(ctx: AdviceContext) -> str:
    """The AuxK coefficient's name in the library that trained the SAE, with its value when recorded."""
    for key in ("aux_loss_coefficient", "auxk_alpha"):
        if ctx.training(key) is not None:
            return _setting(ctx, key)
    library = str(ctx.result.sae.source_library)
    return _setting(ctx, "auxk_alpha" if library in ("sparsify", "dictionary_learning") else "aux_loss_coefficient")


def _k(ctx: AdviceContext) -> str:
    k = ctx.training("k")
    return f" (now k = {k})" if k is not None else ""


def fewer_active(ctx: AdviceContext) -> str:
    """How to make fewer latents fire per token."""
    return {
        TOPK: f"lower k{_k(ctx)}",
        JUMPRELU: f"raise the L0 penalty ({_setting(ctx, 'l0_coefficient')})",
        L1: f"raise the L1 penalty ({_setting(ctx, 'l1_coefficient')})",
    }.get(family(ctx.architecture), "strengthen whatever sets its sparsity")


def more_active(ctx: AdviceContext) -> str:
    """How to let more latents fire per token."""
    return {
        TOPK: f"raise k{_k(ctx)}",
        JUMPRELU: f"lower the L0 penalty ({_setting(ctx, 'l0_coefficient')})",
        L1: f"lower the L1 penalty ({_setting(ctx, 'l1_coefficient')})",
    }.get(family(ctx.architecture), "weaken whatever sets its sparsity")


def revive_dead(ctx: AdviceContext) -> list[str]:
    """Remedies for dead latents specific to the architecture."""
    kind = family(ctx.architecture)
    if kind == TOPK:
        return [f"raise the AuxK auxiliary loss that revives dead latents ({aux_setting(ctx)})"]
    if kind == JUMPRELU:
        return [
            f"lower the L0 penalty ({_setting(ctx, 'l0_coefficient')}) or the thresholds' starting value "
            f"({_setting(ctx, 'jumprelu_init_threshold')}) so pre-activations can reach them",
            "add the pre-activation loss that lifts dead latents toward their thresholds (SAELens "
            "`pre_act_loss_coefficient`)",
        ]
    if kind == L1:
        return [
            f"warm the L1 penalty up over the first steps ({_setting(ctx, 'l1_warm_up_steps')}) so latents find "
            "data before it bites",
            "resample dead latents (dictionary_learning `resample_steps`) or switch to BatchTopK with the AuxK loss "
            "(`architecture: batchtopk`)",
        ]
    return ["switch to TopK or BatchTopK with the AuxK auxiliary loss (`architecture: batchtopk`)"]


def tame_dense(ctx: AdviceContext) -> str:
    """What to change when many latents fire on most tokens."""
    kind = family(ctx.architecture)
    if kind == TOPK:
        return (
            f"a {name(ctx)} SAE has no sparsity penalty to strengthen: lower k{_k(ctx)}, or check the auxiliary "
            f"loss ({aux_setting(ctx)}): AuxK trains dead latents on the reconstruction error, and latents revived "
            "that way can end up firing on most tokens"
        )
    if kind == JUMPRELU:
        return (
            f"raise the L0 penalty ({_setting(ctx, 'l0_coefficient')}) or the thresholds' starting value "
            f"({_setting(ctx, 'jumprelu_init_threshold')})"
        )
    if kind == L1:
        return f"strengthen the sparsity penalty ({_setting(ctx, 'l1_coefficient')})"
    return "strengthen whatever sets its sparsity"


def scale_sensitive(ctx: AdviceContext) -> str:
    """What in training acts on the raw activation scale (for the normalisation finding)."""
    return {
        TOPK: "the learning rate and the AuxK loss",
        JUMPRELU: f"the thresholds, the L0 penalty ({_setting(ctx, 'l0_coefficient')}) and the learning rate",
        L1: f"the sparsity penalty ({_setting(ctx, 'l1_coefficient')}) and the learning rate",
    }.get(family(ctx.architecture), "the sparsity setting and the learning rate")


def retune_after_normalising(ctx: AdviceContext) -> str:
    """What to re-tune once activations are normalised."""
    return {
        TOPK: "then re-tune the learning rate and the AuxK coefficient (k does not depend on the scale)",
        JUMPRELU: "then re-tune `l0_coefficient`, `jumprelu_init_threshold` and the lr",
        L1: "then re-tune `l1_coefficient` and the lr",
    }.get(family(ctx.architecture), "then re-tune the sparsity setting and the lr")
