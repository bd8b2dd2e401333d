#!/usr/bin/env python
"""The README's compare example: one SAE trained with each library's own code, then `saehealth compare`.

    python scripts/example_comparison.py [--out checkpoints/example] [--tokens 20000]

On the built-in model's blocks.0.hook_resid_post, 1,024 latents each, on the same training activations
(the train split; evaluation uses validation):
- `demo`: SAELens, `saehealth train demo` (TopK, k 64), unless checkpoints/demo already holds it;
- `sparsify_k32`: EleutherAI sparsify's `SparseCoder` (TopK, k 32) trained on its own loss (FVU) with its
  Adam learning rate for this width, its decoder kept at unit norm as its trainer does; saved with
  `save_to_disk` into a run folder (`config.json` + `layers.0/`), as sparsify's trainer lays one out;
- `dl_batchtopk_k32`: dictionary_learning's `trainSAE` with its `BatchTopKTrainer` (k 32) and defaults but
  for the run's length (warm-up and threshold start at a tenth of the steps, the inference threshold's running
  average over about 10 steps), fed the same activations, written to `trainer_0/` as it writes them.
All three see 750k training tokens in batches of 4,096 (the train split's 475k, reshuffled for a second epoch).
Then `saehealth compare` of the three on `--tokens` validation tokens, whose markdown table is printed.
Needs `eai-sparsify` and `dictionary-learning` (`pip install --no-deps dictionary-learning`). Takes about
40 s on 2 CPU cores, plus 30 s to train the demo SAE when checkpoints/demo does not hold it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import torch

import saehealth
from saehealth.data import sequence_batches, special_token_mask

HOOK = "blocks.0.hook_resid_post"
WIDTH = 1024
BATCH_SEQUENCES = 32
TRAIN_TOKENS = 750_000  # as the demo trains


def training_activations(n_tokens: int) -> torch.Tensor:
    """(tokens, d_model) activations at HOOK on the built-in train split, BOS left out (as the demo trains)."""
    model = saehealth.load_model(saehealth.BUILTIN_MODEL, device="cpu")
    data = saehealth.load_dataset(saehealth.BUILTIN_DATASET, split="train")
    layer = int(HOOK.split(".")[1])
    chunks, total = [], 0
    batches = sequence_batches(data, model.tokenizer, 128, n_tokens // 128 + 1, BATCH_SEQUENCES, seed=42)
    with torch.no_grad():
        for tokens in batches:
            _, cache = model.run_with_cache(tokens, names_filter=HOOK, stop_at_layer=layer + 1)
            acts = cache[HOOK][special_token_mask(tokens, model.tokenizer)]
            chunks.append(acts)
            total += len(acts)
            if total >= n_tokens:
                break
    return torch.cat(chunks)[:n_tokens]


def batches_of(acts: torch.Tensor) -> list[torch.Tensor]:
    """TRAIN_TOKENS tokens in batches of 4,096, reshuffled each epoch (the train split holds 475k tokens)."""
    batches: list[torch.Tensor] = []
    generator = torch.Generator().manual_seed(0)
    while len(batches) * 4096 < TRAIN_TOKENS:
        batches += acts[torch.randperm(len(acts), generator=generator)].split(4096)[: len(acts) // 4096]
    return batches[: TRAIN_TOKENS // 4096]


def train_sparsify(acts: torch.Tensor, folder: Path) -> None:
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    sae = SparseCoder(acts.shape[1], SparseCoderConfig(num_latents=WIDTH, k=32))
    sae.b_dec.data = acts[:4096].mean(0)  # sparsify's trainer starts b_dec at the first batch's mean
    lr = 2e-4 / (WIDTH / 2**14) ** 0.5  # sparsify's Adam default for this width
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    for batch in batches_of(acts):
        loss = sae(batch).fvu
        loss.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        optimizer.step()
        optimizer.zero_grad()
        sae.set_decoder_norm_to_unit_norm()
    sae.save_to_disk(folder / "layers.0")
    run = {"model": saehealth.BUILTIN_MODEL, "dataset": saehealth.BUILTIN_DATASET, "ctx_len": 128, "lr": lr}
    (folder / "config.json").write_text(json.dumps(run, indent=2))


def train_dictionary_learning(acts: torch.Tensor, folder: Path) -> None:
    try:
        import nnsight  # noqa: F401
    except ImportError:  # dictionary_learning's package __init__ imports it for its buffer, which is not used here
        sys.modules["nnsight"] = types.SimpleNamespace(LanguageModel=object)
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE, BatchTopKTrainer
    from dictionary_learning.training import trainSAE

    torch.manual_seed(0)
    batches = batches_of(acts)
    steps = len(batches)
    trainer = {
        "trainer": BatchTopKTrainer,
        "dict_class": BatchTopKSAE,
        "activation_dim": acts.shape[1],
        "dict_size": WIDTH,
        "k": 32,
        "steps": steps,
        "warmup_steps": steps // 10,
        "threshold_start_step": steps // 10,
        # The inference threshold is a running average of each batch's smallest kept activation; its default
        # window (beta 0.999) is for runs of tens of thousands of steps and would barely leave its first value.
        "threshold_beta": 0.9,
        "layer": 0,
        "lm_name": saehealth.BUILTIN_MODEL,
        "submodule_name": "resid_post_layer_0",
        "device": "cpu",
        "seed": 0,
    }
    trainSAE(iter(batches), [trainer], steps=steps, save_dir=str(folder), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="checkpoints/example", help="folder for the sparsify and DL SAEs")
    parser.add_argument("--tokens", type=int, default=20_000, help="validation tokens for compare")
    parser.add_argument("--report", default="reports/comparison_example", help="compare's --out")
    args = parser.parse_args()

    out = Path(args.out)
    demo = Path("checkpoints/demo")
    if not (demo / "cfg.json").exists():
        subprocess.run([sys.executable, "-m", "saehealth", "train", "demo"], check=True)
    acts = training_activations(TRAIN_TOKENS)
    train_sparsify(acts, out / "sparsify_k32")
    train_dictionary_learning(acts, out / "dl_batchtopk_k32")
    members = [str(demo), str(out / "sparsify_k32"), str(out / "dl_batchtopk_k32")]
    command = ["saehealth", "compare", *members, "--tokens", str(args.tokens), "--out", args.report, "--force"]
    subprocess.run([sys.executable, "-m", *command], check=True, stdout=subprocess.DEVNULL)
    print((Path(args.report) / "comparison.md").read_text())


if __name__ == "__main__":
    main()
