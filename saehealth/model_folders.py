"""TransformerLens configurations for local Hugging Face model folders, decided by the folder's config.json alone.

TransformerLens picks a model's conversion from its *name*: `convert_hf_model_config` tests substrings such as
"llama" and "gemma" of whatever it is given before it reads any config, so a local folder called
`Meta-Llama-3-8B-tiny` would get the hard-coded 32-layer Llama-3-8B configuration, any path containing "llama"
would skip reading its config.json, and Gemma families have no config-driven conversion at all. Here the
folder's `architectures` entry decides:

- architectures TransformerLens converts from a Hugging Face config (Llama, Mistral, Qwen2/3, GPT-2, NeoX, ...)
  are converted by TransformerLens itself, from a copy of config.json in a folder of a neutral name, so that
  no substring of the user's path can select a hard-coded configuration;
- Gemma, Gemma-2 and Gemma-3 (text), which TransformerLens converts only by official name, start from
  TransformerLens' own configuration of one official model of that architecture, with every size, rotary base,
  window, soft cap and layer pattern replaced by the folder's values;
- anything else is refused with the reason.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import torch

from saehealth.errors import ModelError

# Architectures whose configuration TransformerLens builds from a Hugging Face config (transformer_lens 3's
# convert_hf_model_config branches on `architecture == ...` for these).
CONFIG_DRIVEN = (
    "GPT2LMHeadModel",
    "GPTNeoForCausalLM",
    "GPTJForCausalLM",
    "GPTNeoXForCausalLM",
    "OPTForCausalLM",
    "BloomForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "GptOssForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "ApertusForCausalLM",
    "Olmo3ForCausalLM",
    "OlmoeForCausalLM",
)
# Architectures TransformerLens converts only by official name: the official model whose configuration is the
# template (its architecture-wide settings), the folder's config.json giving every model-specific value.
NAME_DRIVEN_TEMPLATES = {
    "GemmaForCausalLM": "google/gemma-2b",
    "Gemma2ForCausalLM": "google/gemma-2-2b",
    "Gemma3ForCausalLM": "google/gemma-3-1b-pt",
}
# Why the others cannot be converted from a folder.
REFUSED = {
    "Gemma3ForConditionalGeneration": "a multimodal Gemma-3 checkpoint: save its language model alone "
    "(Gemma3ForCausalLM, e.g. model.language_model with its text_config) and pass that folder",
    "OlmoForCausalLM": "TransformerLens converts OLMo only by its hub name (allenai/OLMo-...-hf)",
    "Olmo2ForCausalLM": "TransformerLens converts OLMo-2 only by its hub name (allenai/OLMo-2-...)",
    "BertForMaskedLM": "not a causal language model",
    "T5ForConditionalGeneration": "not a causal language model",
    "HubertModel": "an audio model",
    "HubertForCTC": "an audio model",
}
# Substrings TransformerLens tests in a model name before reading its config (transformer_lens 3).
_NAME_TRIGGERS = ("llama", "gemma", "hubert", "wav2vec2", "tinystories", "python")


def supported_architectures() -> tuple[str, ...]:
    """The Hugging Face architectures saehealth loads from a local folder."""
    return (*CONFIG_DRIVEN, *NAME_DRIVEN_TEMPLATES)


def architecture_of(folder: Path, hf_config: dict) -> str:
    """The folder's architecture (config.json `architectures`), or ModelError saying why it cannot be converted."""
    names = hf_config.get("architectures") or []
    if not names:
        raise ModelError(
            f"{folder}/config.json names no 'architectures': add the model class it was saved from "
            f'(e.g. "architectures": ["LlamaForCausalLM"]).'
        )
    architecture = str(names[0])
    if architecture in REFUSED:
        raise ModelError(f"{folder} holds {architecture}, which cannot be evaluated: {REFUSED[architecture]}.")
    if architecture not in supported_architectures():
        raise ModelError(
            f"{folder} holds {architecture}, which TransformerLens cannot convert: use one of "
            f"{', '.join(sorted(supported_architectures()))}."
        )
    return architecture


def transformer_lens_config(
    folder: Path,
    hf_config: dict,
    *,
    device: str,
    dtype: torch.dtype,
    fold_ln: bool = False,
    n_ctx: int | None = None,
    **options,
):
    """The `HookedTransformerConfig` of the model in `folder`, from its config.json (`hf_config`) only.

    `n_ctx` raises the context TransformerLens caps some families at (Mistral, Qwen3: 2,048; Gemma: 8,192) up
    to what the folder's config allows; `options` are further `get_pretrained_model_config` keywords.
    """
    from transformer_lens import HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as loading

    architecture = architecture_of(folder, hf_config)
    common = {"fold_ln": fold_ln, "device": device, "dtype": dtype, **options}
    if architecture in NAME_DRIVEN_TEMPLATES:
        template = loading.get_pretrained_model_config(NAME_DRIVEN_TEMPLATES[architecture], hf_cfg=hf_config, **common)
        fields = {**template.to_dict(), **_gemma_fields(hf_config, architecture)}
    else:
        with _neutral_config(hf_config) as local:
            fields = loading.get_pretrained_model_config(local, hf_cfg=hf_config, **common).to_dict()
    fields["model_name"] = folder.name
    fields["tokenizer_name"] = str(folder)
    allowed = _context_allowed(hf_config, architecture)
    if allowed is not None and fields["n_ctx"] > allowed:
        fields["n_ctx"] = allowed  # TransformerLens' fixed 2,048 for Mistral/Qwen3 can exceed a small model's
    if n_ctx is not None and n_ctx > fields["n_ctx"] and (allowed is None or n_ctx <= allowed):
        fields["n_ctx"] = n_ctx  # TransformerLens caps some families' context for memory: lift it as needed
    fields.pop("n_params", None)  # derived: recomputed from the sizes
    return HookedTransformerConfig.from_dict(fields)


def context_allowed(folder: Path, hf_config: dict) -> int | None:
    """The longest context the folder's config.json allows (None when it does not say)."""
    return _context_allowed(hf_config, architecture_of(folder, hf_config))


def _context_allowed(hf_config: dict, architecture: str) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        if isinstance(hf_config.get(key), int):
            return int(hf_config[key])
    return None


def _gemma_fields(hf: dict, architecture: str) -> dict:
    """The model-specific HookedTransformerConfig fields of a Gemma-family config.json (the template holds the
    rest: RMSNorm, gated MLP, rotary embeddings, Gemma's norms before and after each sublayer)."""
    d_head = int(hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"])
    fields = {
        "d_model": hf["hidden_size"],
        "d_head": d_head,
        "n_heads": hf["num_attention_heads"],
        "n_key_value_heads": hf.get("num_key_value_heads") or hf["num_attention_heads"],
        "d_mlp": hf["intermediate_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_ctx": min(int(hf.get("max_position_embeddings") or 8192), 8192),  # TransformerLens' default cap
        "eps": hf.get("rms_norm_eps", 1e-6),
        "d_vocab": hf["vocab_size"],
        "d_vocab_out": hf["vocab_size"],
        "rotary_dim": d_head,  # derived from the template's d_head when it was built: set again
        "act_fn": hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh",
        "attn_scale": math.sqrt(float(hf.get("query_pre_attn_scalar") or d_head)),
    }
    rope = hf.get("rope_parameters") or {}
    full = rope.get("full_attention", rope)
    fields["rotary_base"] = full.get("rope_theta", hf.get("rope_theta", 10000.0))
    if architecture == "GemmaForCausalLM":
        return fields
    fields["window_size"] = hf.get("sliding_window") or fields["n_ctx"]
    fields["attn_types"] = [
        "local" if kind == "sliding_attention" else "global" for kind in hf.get("layer_types") or []
    ] or _default_gemma_layers(hf, architecture)
    fields["attn_scores_soft_cap"] = float(hf.get("attn_logit_softcapping") or -1.0)
    fields["output_logits_soft_cap"] = float(hf.get("final_logit_softcapping") or -1.0)
    if architecture == "Gemma3ForCausalLM":
        local = rope.get("sliding_attention", {})
        fields["rotary_base_local"] = local.get("rope_theta", hf.get("rope_local_base_freq", 10000.0))
        scaling = full if full.get("rope_type") == "linear" else hf.get("rope_scaling") or {}
        fields["rotary_scaling_factor"] = float(scaling.get("factor", 1.0)) if scaling else 1.0
    return fields


def _default_gemma_layers(hf: dict, architecture: str) -> list[str]:
    """Gemma-2 alternates sliding and global layers; Gemma-3 has one global layer in every `pattern`."""
    n_layers = hf["num_hidden_layers"]
    if architecture == "Gemma2ForCausalLM":
        return ["local" if i % 2 == 0 else "global" for i in range(n_layers)]
    pattern = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6)
    return ["global" if (i + 1) % pattern == 0 else "local" for i in range(n_layers)]


class _neutral_config:
    """A temporary folder of a neutral name holding only the folder's config.json, which is all TransformerLens
    reads to build the configuration (the weights come from the loaded Hugging Face model). No substring of the
    user's path can then select a hard-coded configuration; a GPT-2 config.json without `n_ctx` (transformers 5
    no longer writes it) gets its `n_positions`, which is what it means."""

    def __init__(self, hf_config: dict):
        self.hf_config = dict(hf_config)
        if self.hf_config.get("model_type") == "gpt2" and "n_ctx" not in self.hf_config:
            self.hf_config["n_ctx"] = self.hf_config.get("n_positions", 1024)

    def __enter__(self) -> str:
        self.holder = tempfile.TemporaryDirectory(prefix="saehealth-")
        folder = Path(self.holder.name) / "model"
        if any(word in str(folder).lower() for word in _NAME_TRIGGERS):
            self.holder.cleanup()
            raise ModelError(
                f"The temporary folder {self.holder.name} contains a word TransformerLens reads as a model name: "
                "set TMPDIR to another folder."
            )
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(self.hf_config, default=str), encoding="utf-8")
        return str(folder)

    def __exit__(self, *exc) -> bool:
        self.holder.cleanup()
        return False
