"""Tiny randomly initialised Hugging Face models of each family saehealth loads, saved to a folder (no download).

Each keeps its family's distinctive parts at toy sizes (d_model 64, 3 layers): grouped-query attention, rotary
bases, RMSNorm, Qwen3's head_dim and q/k norms, Gemma-2's alternating sliding windows and soft caps, Gemma-3's
local/global pattern. The vocabulary is the built-in tokenizer's, so the built-in corpus and absorption's
spelling prompts work on every family.
"""

from __future__ import annotations

from pathlib import Path

import torch

SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 4}


def _configs(vocab: int, bos: int | None, eos: int | None) -> dict:
    """family -> (config, model class), built lazily so that a missing class fails only its own family."""
    import transformers as t

    special = {"bos_token_id": bos, "eos_token_id": eos}
    common = {**SIZES, **special, "vocab_size": vocab, "max_position_embeddings": 256}
    gemma = {"num_key_value_heads": 2, "head_dim": 16, "sliding_window": 8, "query_pre_attn_scalar": 16}
    return {
        "gpt2": lambda: (
            t.GPT2Config(vocab_size=vocab, n_positions=256, n_embd=64, n_layer=3, n_head=4, **special),
            t.GPT2LMHeadModel,
        ),
        "neox": lambda: (t.GPTNeoXConfig(**common), t.GPTNeoXForCausalLM),
        "llama": lambda: (t.LlamaConfig(num_key_value_heads=2, rope_theta=500000.0, **common), t.LlamaForCausalLM),
        "mistral": lambda: (
            t.MistralConfig(num_key_value_heads=2, sliding_window=None, **common),
            t.MistralForCausalLM,
        ),
        "qwen2": lambda: (t.Qwen2Config(num_key_value_heads=2, **common), t.Qwen2ForCausalLM),
        "qwen3": lambda: (t.Qwen3Config(num_key_value_heads=2, head_dim=16, **common), t.Qwen3ForCausalLM),
        "gemma2": lambda: (
            t.Gemma2Config(**gemma, final_logit_softcapping=5.0, attn_logit_softcapping=10.0, **common),
            t.Gemma2ForCausalLM,
        ),
        "gemma3": lambda: (
            t.Gemma3TextConfig(**gemma, **{**common, "num_hidden_layers": 4}, sliding_window_pattern=2),
            t.Gemma3ForCausalLM,
        ),
    }


FAMILIES = ("gpt2", "neox", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")


def save_tiny_model(family: str, folder: Path, tokenizer, seed: int = 0):
    """Build `family`'s tiny model with random weights, save it and the tokenizer into `folder`; returns the
    Hugging Face model (eval mode) to compare against."""
    config, model_class = _configs(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)[family]()
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model
