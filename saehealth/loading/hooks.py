"""Translating other libraries' hook names into TransformerLens hook names.

sparsify names a hookpoint by the HuggingFace module whose output it reads (`layers.3`, `h.3.mlp`,
`layers.3.self_attn`, `embed_tokens`), relative to the model's base module. dictionary_learning names it
`resid_post_layer_3` (or by a module path). The mapping, for an SAE on the module's output:

| HF module                            | TransformerLens hook          |
| ------------------------------------ | ----------------------------- |
| `layers.N`, `h.N`, `blocks.N`        | `blocks.N.hook_resid_post`    |
| `layers.N.mlp`, `h.N.mlp`            | `blocks.N.hook_mlp_out`       |
| `layers.N.self_attn`, `h.N.attn`, `layers.N.attention` | `blocks.N.hook_attn_out` |
| `h.N.mlp.act` (GPT-2 style)          | `blocks.N.mlp.hook_post`      |
| `embed_tokens`, `wte`, `embed_in`    | `hook_embed`                  |

A transcoder reads the module's *input* and replaces its *output*:

| HF module      | input hook                         | output hook                |
| -------------- | ---------------------------------- | -------------------------- |
| `layers.N`     | `blocks.N.hook_resid_pre`          | `blocks.N.hook_resid_post` |
| `layers.N.mlp` | `blocks.N.ln2.hook_normalized`     | `blocks.N.hook_mlp_out`    |
| attention      | `blocks.N.ln1.hook_normalized`     | `blocks.N.hook_attn_out`   |
| `h.N.mlp.act`  | `blocks.N.mlp.hook_pre`            | `blocks.N.mlp.hook_post`   |

The MLP's HuggingFace input is ln2's output *after* its weight and bias; TransformerLens has no hook holding
exactly that, and `blocks.N.ln2.hook_normalized` (SAELens' convention for MLP transcoders) is the normalised
residual before them, so the two agree only where ln2's weight is 1 and its bias 0. The mapping says so in a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIX = r"(?:(?:model|transformer|gpt_neox|base_model|language_model)\.)*"
_LAYER = re.compile(_PREFIX + r"(?:layers|h|blocks|layer)[._](\d+)(?:\.(.+))?")
_EMBED = re.compile(_PREFIX + r"(?:embed_tokens|wte|embed_in|embeddings)")
_ATTN = {"attn", "self_attn", "attention", "self_attention"}
_DL_NAME = re.compile(r"(resid_post|resid_pre|resid_mid|mlp_out|attn_out)_layer_(\d+)")


@dataclass(frozen=True)
class HookMapping:
    """Where a foreign hookpoint lands in TransformerLens, and what was assumed on the way."""

    hook_name: str | None
    output_hook_name: str | None = None
    note: str | None = None


def map_hf_module(name: str, transcode: bool = False, io: str = "out") -> HookMapping:
    """The TransformerLens hook(s) for a HuggingFace module name (sparsify hookpoints, dictionary_learning paths).

    `io="in"` asks for the module's input instead of its output (dictionary_learning's buffer `io`).
    """
    if _EMBED.fullmatch(name):
        if transcode:
            return HookMapping(
                None, None, f"hookpoint {name!r} (embedding) has no TransformerLens input hook: pass --hook"
            )
        return HookMapping("hook_embed", None, f"hook mapped from {name} to hook_embed")
    match = _LAYER.fullmatch(name)
    if match is None:
        return HookMapping(None, None, f"hookpoint {name!r} has no known TransformerLens equivalent: pass --hook")
    layer, sub = int(match.group(1)), match.group(2)
    b = f"blocks.{layer}"
    if sub is None:
        pair = (f"{b}.hook_resid_pre", f"{b}.hook_resid_post")
    elif sub == "mlp":
        pair = (f"{b}.ln2.hook_normalized", f"{b}.hook_mlp_out")
    elif sub in _ATTN:
        pair = (f"{b}.ln1.hook_normalized", f"{b}.hook_attn_out")
    elif sub == "mlp.act":
        pair = (f"{b}.mlp.hook_pre", f"{b}.mlp.hook_post")
    else:
        return HookMapping(None, None, f"hookpoint {name!r} has no known TransformerLens equivalent: pass --hook")
    if transcode:
        note = f"transcoder hooks mapped from {name}: input {pair[0]}, output {pair[1]}"
        if pair[0].endswith(".hook_normalized"):
            note += " (TransformerLens' normalised residual before the LayerNorm weight and bias)"
        return HookMapping(pair[0], pair[1], note)
    hook = pair[0] if io == "in" else pair[1]
    return HookMapping(hook, None, f"hook mapped from {name} ({'input' if io == 'in' else 'output'}) to {hook}")


def map_dictionary_learning(submodule_name: str | None, layer: int | None, io: str = "out") -> HookMapping:
    """The TransformerLens hook for a dictionary_learning trainer config (`submodule_name`, `layer`, buffer `io`)."""
    if submodule_name:
        match = _DL_NAME.fullmatch(submodule_name)
        if match:
            site, n = match.group(1), int(match.group(2))
            hook = f"blocks.{n}.hook_{site}"
            return HookMapping(hook, None, f"hook mapped from {submodule_name} to {hook}")
        mapped = map_hf_module(submodule_name, io=io)
        if mapped.hook_name is not None:
            return mapped
    if layer is not None:
        hook = f"blocks.{layer}.hook_resid_post"
        what = f"submodule {submodule_name!r}" if submodule_name else "no submodule name"
        return HookMapping(
            hook, None, f"{what} in config.json: assumed the residual stream after layer {layer} ({hook})"
        )
    return HookMapping(None, None, "config.json names no hook or layer: pass --hook")
