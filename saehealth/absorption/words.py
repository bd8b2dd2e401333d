"""SAEBench 0.6's first-letter task: its word list, its word splits and its prompts, as token ids.

- Words (`vocab.get_alpha_tokens`): every token whose text is letters only, with at most one leading
  space; single letters count.
- Splits (`probing.create_dataset_probe_training`): a shuffle of the words, the first 80% for training.
- Prompts (`prompting.create_icl_prompt`, `prepend_separator_to_first_example=True`): a newline, then
  10 in-context examples `"{word} has the first letter: {LETTER}"` separated by newlines, then
  `"\n{word} has the first letter:"`; the probed activation is the word token's. Prompts are built from
  token ids (the model's BOS first when it prepends one) so the word is exactly the probed token;
  on a byte-level BPE tokenizer that is the same token sequence as tokenizing SAEBench's string.

One deliberate difference: SAEBench draws a training prompt's examples from the training words and a
test prompt's from the test words; here every word is prompted once with examples from the whole
vocabulary (as SAEBench's absorption step prompts), so one prompting serves every word split.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence

import numpy as np
import torch

LETTERS = string.ascii_uppercase
PROMPT_TEMPLATE = "{word} has the first letter:"
N_ICL = 10  # max_icl_examples
TEST_FRACTION = 0.2  # train_test_fraction 0.8


def is_saebench_word(text: str) -> bool:
    """Letters only, after at most one leading space (single letters included)."""
    word = text[1:] if text.startswith(" ") else text
    return len(word) > 0 and all(c in string.ascii_letters for c in word)


def saebench_vocab(tokenizer) -> list[tuple[int, str]]:
    """(token id, text) of every SAEBench first-letter word of a Hugging Face tokenizer, by id."""
    ids = range(len(tokenizer))
    texts = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.convert_ids_to_tokens(list(ids))]
    return [(i, text) for i, text in zip(ids, texts, strict=True) if is_saebench_word(text)]


def letter_index(text: str) -> int:
    """0..25 for the word's first letter."""
    return LETTERS.index(text.strip()[0].upper())


def word_splits(n_words: int, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`n_splits` independent shuffles of range(n_words), each cut into (train 80%, test 20%) indices."""
    splits = []
    for split in range(n_splits):
        order = np.random.default_rng([seed, split]).permutation(n_words)
        cut = int(n_words * (1 - TEST_FRACTION))
        splits.append((np.sort(order[:cut]), np.sort(order[cut:])))
    return splits


class PromptBuilder:
    """Token ids of SAEBench's first-letter prompts for one tokenizer, pieces encoded once."""

    def __init__(self, tokenizer, prepend_bos: bool = True):
        self.tokenizer = tokenizer
        encode = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.head = ([tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []) + encode(
            "\n"
        )
        self.question = encode(PROMPT_TEMPLATE.format(word=""))
        self.newline = encode("\n")
        self.answers = {letter: encode(f" {letter}") for letter in LETTERS}
        self.letter_of: dict[int, str] = {}

    def _letter(self, token_id: int) -> str:
        if token_id not in self.letter_of:
            self.letter_of[token_id] = LETTERS[letter_index(self.tokenizer.decode([token_id]))]
        return self.letter_of[token_id]

    def prompt(self, word_id: int, icl_ids: Sequence[int]) -> tuple[list[int], int]:
        """The prompt's token ids up to and including the word, and the word's position."""
        tokens = list(self.head)
        for i, icl_id in enumerate(icl_ids):
            if i:
                tokens += self.newline
            tokens += [icl_id, *self.question, *self.answers[self._letter(icl_id)]]
        if icl_ids:
            tokens += self.newline
        tokens.append(word_id)
        return tokens, len(tokens) - 1

    def text(self, word: str, icl_words: Sequence[str]) -> str:
        """SAEBench's prompt string (for checks): what `prompt` encodes, plus the question after the word."""
        examples = [PROMPT_TEMPLATE.format(word=w) + f" {LETTERS[letter_index(w)]}" for w in icl_words]
        return "\n" + "\n".join([*examples, PROMPT_TEMPLATE.format(word=word)])


def icl_examples_that_fit(builder: PromptBuilder, n_ctx: int, wanted: int = N_ICL) -> int:
    """As many in-context examples as the model's context allows, up to `wanted`."""
    per_example = 1 + len(builder.question) + max(len(a) for a in builder.answers.values()) + len(builder.newline)
    room = n_ctx - len(builder.head) - 1 - len(builder.question)
    return max(0, min(wanted, room // per_example))


@torch.no_grad()
def word_activations(
    model, hook_name: str, word_ids: Sequence[int], pool: Sequence[int], *, seed: int, batch_size: int = 64
) -> torch.Tensor:
    """The hook's activation at the word token of one prompt per word, (len(word_ids), d) float32 on CPU.

    Each prompt's examples are a uniform draw of distinct pool words other than the word, seeded.
    """
    builder = PromptBuilder(model.tokenizer, prepend_bos=bool(model.cfg.default_prepend_bos))
    n_icl = icl_examples_that_fit(builder, model.cfg.n_ctx)
    rng = random.Random(seed)
    pool = list(pool)
    stop = _stop_layer(model, hook_name)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    outputs = []
    for start in range(0, len(word_ids), batch_size):
        prompts = []
        for word_id in word_ids[start : start + batch_size]:
            icl = [w for w in rng.sample(pool, min(n_icl + 1, len(pool))) if w != word_id][:n_icl]
            prompts.append(builder.prompt(word_id, icl))
        # Causal model: the word's activation depends only on the tokens up to it, so right padding and
        # leaving out the question after the word change nothing.
        width = max(len(tokens) for tokens, _ in prompts)
        batch = torch.tensor([tokens + [pad] * (width - len(tokens)) for tokens, _ in prompts], device=model.cfg.device)
        positions = torch.tensor([pos for _, pos in prompts], device=model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=hook_name, stop_at_layer=stop)
        outputs.append(cache[hook_name][torch.arange(len(prompts), device=batch.device), positions].float().cpu())
    if not outputs:
        return torch.zeros(0, model.cfg.d_model)
    return torch.cat(outputs)


def _stop_layer(model, hook_name: str) -> int | None:
    """Run only as far as the hook needs (blocks.N.* needs blocks 0..N)."""
    parts = hook_name.split(".")
    if parts[0] == "blocks" and parts[1].isdigit():
        return min(int(parts[1]) + 1, model.cfg.n_layers)
    return None
