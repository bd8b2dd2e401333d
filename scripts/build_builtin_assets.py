#!/usr/bin/env python
"""Rebuild saehealth's built-in corpus, tokenizer and tiny language model from scratch.

    python scripts/build_builtin_assets.py [--stage corpus|tokenizer|model|all] [--out saehealth/assets]

The shipped files in saehealth/assets/ are this script's output (on CPU, torch 2.13, 2 threads).
- corpus: CPython's documentation (pydoc_data.topics and the standard library's docstrings, read with
  `ast`, never imported), split by document into train/validation.
- tokenizer: byte-level BPE with `<|endoftext|>` as BOS/EOS/PAD.
- model: a 2-layer GPT-style HookedTransformer trained on the corpus mixed with a first-letter spelling
  curriculum (SAEBench's absorption prompt form), so the first-letter absorption metric is measurable.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import inspect
import json
import math
import random
import sys
import sysconfig
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from saehealth import builtin, spelling  # noqa: E402

SEED = 0
VOCAB_SIZE = 4096
CONTEXT = 128
VALIDATION_SHARE = 0.06  # of the corpus's characters, whole documents, chosen by a hash of their id
CORPUS_CHARS = 1_800_000
MODEL_CONFIG = dict(
    n_layers=2,
    d_model=128,
    n_heads=4,
    d_head=32,
    d_mlp=512,
    n_ctx=CONTEXT,
    d_vocab=VOCAB_SIZE,
    act_fn="gelu",
    normalization_type="LN",
    positional_embedding_type="standard",
    original_architecture="GPT2LMHeadModel",
    seed=SEED,
)
TRAIN = dict(
    steps=1200,
    batch_size=32,
    lr=2e-3,
    warmup=100,
    weight_decay=0.1,
    spelling_fraction=0.35,  # share of sequences that are spelling curriculum
    compact_fraction=0.5,  # share of spelling lines in the short form " apple A"
)
PROBE_HOOK = "blocks.0.hook_resid_post"


# ---------------------------------------------------------------- corpus
def _docstring_document(path: Path, stdlib: Path) -> str | None:
    """All docstrings of one module, headed by their qualified names."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    module = ".".join(path.relative_to(stdlib).with_suffix("").parts).removesuffix(".__init__")
    parts = []
    doc = ast.get_docstring(tree)
    if doc:
        parts.append(f"{module}\n\n{inspect.cleandoc(doc)}")
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc and not node.name.startswith("_"):
                parts.append(f"{node.name}\n\n{inspect.cleandoc(doc)}")
    return "\n\n".join(parts) if parts else None


def build_corpus(out: Path) -> None:
    import pydoc_data.topics

    docs = [(f"topic:{name}", text.strip()) for name, text in sorted(pydoc_data.topics.topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip")
    total = sum(len(t) for _, t in docs)
    for path in sorted(stdlib.rglob("*.py")):
        if total >= CORPUS_CHARS:
            break
        if any(part in skip for part in path.relative_to(stdlib).parts):
            continue
        text = _docstring_document(path, stdlib)
        if text and len(text) > 200:
            docs.append((f"module:{path.relative_to(stdlib)}", text))
            total += len(text)
    # Documents in a hash order (stable across Python versions) fill validation up to its share.
    validation: set[str] = set()
    held = 0
    for doc_id, text in sorted(docs, key=lambda d: zlib.crc32(d[0].encode())):
        if held >= VALIDATION_SHARE * total:
            break
        validation.add(doc_id)
        held += len(text)
    with gzip.open(out / builtin.CORPUS_FILE, "wt", encoding="utf-8", compresslevel=9) as f:
        for doc_id, text in docs:
            split = "validation" if doc_id in validation else "train"
            f.write(json.dumps({"id": doc_id, "split": split, "text": text}) + "\n")
    print(f"corpus: {len(docs)} documents ({len(validation)} validation, {held:,} characters), {total:,} characters")


# ---------------------------------------------------------------- tokenizer
def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = [d["text"] for d in builtin.read_corpus(out / builtin.CORPUS_FILE) if d["split"] == "train"]
    # The answer tokens " A".." Z" and the prompt's words must exist as single tokens.
    prompts = [spelling.format_example(f" {letter}") for letter in spelling.LETTERS] * 50
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[builtin.END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs + prompts, trainer=trainer)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=builtin.END_OF_TEXT,
        eos_token=builtin.END_OF_TEXT,
        pad_token=builtin.END_OF_TEXT,
        add_bos_token=True,
        model_max_length=CONTEXT,
    )
    hf_tokenizer.save_pretrained(str(out / builtin.TOKENIZER_DIR))
    print(f"tokenizer: {tokenizer.get_vocab_size()} tokens")


# ---------------------------------------------------------------- model
def _token_stream(tokenizer, split: str, out: Path) -> list[int]:
    ids: list[int] = []
    for doc in builtin.read_corpus(out / builtin.CORPUS_FILE):
        if doc["split"] == split:
            ids += [tokenizer.bos_token_id] + tokenizer.encode(doc["text"], add_special_tokens=False)
    return ids


def _spelling_sequence(
    tokenizer, words: list[tuple[int, str]], rng: random.Random, compact_fraction: float = 0.0
) -> list[int]:
    """BOS then first-letter examples, one a line, until the context is full.

    A `compact_fraction` of the lines drop the question (" apple A"), so the letter is predicted right
    at the word token, which puts it in the word token's own residual stream.
    """
    newline_answers = {
        letter: tokenizer.encode(spelling.ANSWER_TEMPLATE.format(letter=letter) + "\n", add_special_tokens=False)
        for letter in spelling.LETTERS
    }
    suffix = tokenizer.encode(spelling.PROMPT_TEMPLATE.format(word=""), add_special_tokens=False)
    seq = [tokenizer.bos_token_id]
    while len(seq) < CONTEXT:
        word_id, word = rng.choice(words)
        question = [] if rng.random() < compact_fraction else suffix
        seq += [word_id] + question + newline_answers[spelling.first_letter(word)]
    return seq[:CONTEXT]


def build_model(
    out: Path,
    steps: int | None = None,
    device: str = "cpu",
    model_config: dict | None = None,
    train: dict | None = None,
    save: bool = True,
):
    """Train the model, measure it, and (with `save`) write weights, config and model card to `out`."""
    import torch
    from safetensors.torch import save_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    model_config = {**MODEL_CONFIG, **(model_config or {})}
    train = {**TRAIN, **(train or {})}
    torch.manual_seed(SEED)
    rng = random.Random(SEED)
    tokenizer = builtin.load_builtin_tokenizer(out)
    model = HookedTransformer(HookedTransformerConfig(**model_config, device=device), tokenizer=tokenizer)
    train_ids = torch.tensor(_token_stream(tokenizer, "train", out), device=device)
    val_ids = torch.tensor(_token_stream(tokenizer, "validation", out), device=device)
    words = spelling.alphabetic_vocab(tokenizer)
    print(f"model: {len(train_ids):,} train tokens, {len(val_ids):,} validation tokens, {len(words)} alphabetic tokens")

    steps = steps or train["steps"]
    batch_size = train["batch_size"]
    n_spell = round(batch_size * train["spelling_fraction"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"], weight_decay=train["weight_decay"])

    def lr_at(step: int) -> float:
        if step < train["warmup"]:
            return (step + 1) / train["warmup"]
        progress = (step - train["warmup"]) / max(1, steps - train["warmup"])
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    started = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(train_ids) - CONTEXT, (batch_size - n_spell,))
        prose = torch.stack([train_ids[s : s + CONTEXT] for s in starts])
        prose[:, 0] = tokenizer.bos_token_id
        spell = [_spelling_sequence(tokenizer, words, rng, train["compact_fraction"]) for _ in range(n_spell)]
        spell = torch.tensor(spell, device=device)
        loss = model(torch.cat([prose, spell]), return_type="loss")
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"  step {step:5d}  loss {loss.item():.3f}  {time.time() - started:.0f}s", flush=True)

    model.eval()
    val_loss = validation_loss(model, val_ids)
    f1 = spelling.first_letter_probe_f1(model, PROBE_HOOK)
    passing = sorted(letter for letter, score in f1.items() if score > 0.6)
    print(
        f"validation CE {val_loss:.3f} nats; probe at {PROBE_HOOK}: {len(passing)} letters with F1 > 0.6 "
        f"(mean F1 {sum(f1.values()) / len(f1):.3f})"
    )
    card = {
        "validation_ce_loss": round(val_loss, 4),
        "validation_tokens": len(val_ids),
        "train_tokens_in_corpus": len(train_ids),
        "spelling_probe_hook": PROBE_HOOK,
        "spelling_probe_f1": {k: round(v, 4) for k, v in f1.items()},
        "spelling_letters_above_0.6": len(passing),
        "training": {**train, "steps": steps, "context": CONTEXT, "seed": SEED},
        "training_seconds": round(time.time() - started),
    }
    if save:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(out / builtin.MODEL_WEIGHTS_FILE))
        (out / builtin.MODEL_CONFIG_FILE).write_text(json.dumps(model_config, indent=2) + "\n")
        (out / builtin.MODEL_CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return card, model


def validation_loss(model, val_ids, batch_size: int = 32) -> float:
    """Mean next-token CE over the validation split in non-overlapping BOS-prefixed windows."""
    import torch

    n = (len(val_ids) - 1) // (CONTEXT - 1)
    windows = torch.stack([val_ids[i * (CONTEXT - 1) : i * (CONTEXT - 1) + CONTEXT - 1] for i in range(n)])
    bos = torch.full((n, 1), model.tokenizer.bos_token_id, device=val_ids.device)
    windows = torch.cat([bos, windows], dim=1)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = windows[start : start + batch_size]
            losses = model(batch, return_type="loss", loss_per_token=True)
            total += losses.sum().item()
            count += losses.numel()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=["corpus", "tokenizer", "model", "all"], default="all")
    parser.add_argument("--out", type=Path, default=REPO / "saehealth" / "assets")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped model's)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)  # the shipped files were built with 2 threads; results depend on it
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("corpus", "all"):
        build_corpus(args.out)
    if args.stage in ("tokenizer", "all"):
        build_tokenizer(args.out)
    if args.stage in ("model", "all"):
        build_model(args.out, args.steps)


if __name__ == "__main__":
    main()
