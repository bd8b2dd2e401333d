"""The first-letter task: which tokens count as words, and how they are prompted.

Shared by the built-in model's spelling curriculum and the spelling probe check of its asset build, so
that both agree on the vocabulary and the prompt (SAEBench's first-letter template). The absorption
metric uses SAEBench's own word list instead (single letters included): saehealth/absorption/words.py.
"""

from __future__ import annotations

import random
import string
import weakref
from collections.abc import Sequence

PROMPT_TEMPLATE = "{word} has the first letter:"
ANSWER_TEMPLATE = " {letter}"
LETTERS = string.ascii_uppercase


def is_alphabetic_word(token_str: str) -> bool:
    """A purely alphabetic token, optionally with one leading space (as SAEBench's vocabulary)."""
    word = token_str[1:] if token_str.startswith(" ") else token_str
    return len(word) >= 2 and word.isascii() and word.isalpha()


def first_letter(token_str: str) -> str:
    """The upper-case first letter of an alphabetic token."""
    return token_str.strip()[0].upper()


def alphabetic_vocab(tokenizer) -> list[tuple[int, str]]:
    """(token id, token string) for every alphabetic token of a Hugging Face tokenizer, by id."""
    words = []
    for token_id in range(len(tokenizer)):
        token_str = tokenizer.decode([token_id])
        if is_alphabetic_word(token_str):
            words.append((token_id, token_str))
    return words


def train_test_split_words(words: Sequence, test_fraction: float = 0.2, seed: int = 42):
    """A deterministic split of the vocabulary, as SAEBench splits it 80/20."""
    shuffled = list(words)
    random.Random(seed).shuffle(shuffled)
    n_test = max(1, round(len(shuffled) * test_fraction))
    return shuffled[n_test:], shuffled[:n_test]


def format_example(word: str) -> str:
    """One completed example: `' apple has the first letter: A'`."""
    return PROMPT_TEMPLATE.format(word=word) + ANSWER_TEMPLATE.format(letter=first_letter(word))


def format_prompt(word: str, icl_words: Sequence[str]) -> str:
    """A prompt with in-context examples, ending where the model must name `word`'s first letter."""
    shots = "".join(format_example(w) + "\n" for w in icl_words)
    return shots + PROMPT_TEMPLATE.format(word=word)


def word_prompt_tokens(tokenizer, word_id: int, icl_word_ids: Sequence[int]) -> tuple[list[int], int]:
    """Token ids of a first-letter prompt for `word_id`, and the position of the word token.

    Built from token ids rather than by tokenizing one string, so the word is exactly the vocabulary
    token being probed (BPE could merge it with its neighbours otherwise).
    """
    suffix, answers = _prompt_pieces(tokenizer)
    tokens = [tokenizer.bos_token_id]
    for icl_id in icl_word_ids:
        letter = first_letter(tokenizer.decode([icl_id]))
        if letter not in answers:
            answers[letter] = tokenizer.encode(ANSWER_TEMPLATE.format(letter=letter) + "\n", add_special_tokens=False)
        tokens += [icl_id] + suffix + answers[letter]
    word_position = len(tokens)
    tokens += [word_id] + suffix
    return tokens, word_position


_PIECES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _prompt_pieces(tokenizer) -> tuple[list[int], dict[str, list[int]]]:
    """The question's tokens and a memo of each letter's answer line, encoded once per tokenizer.

    Thousands of prompts are built per evaluation; encoding these fixed strings for each one cost
    more than running the tiny model on them. Callers concatenate the lists, never mutate them.
    """
    if tokenizer not in _PIECES:
        _PIECES[tokenizer] = (tokenizer.encode(PROMPT_TEMPLATE.format(word=""), add_special_tokens=False), {})
    return _PIECES[tokenizer]


def word_activations(
    model,
    hook_name: str,
    word_ids: Sequence[int],
    *,
    n_icl: int = 4,
    batch_size: int = 64,
    seed: int = 42,
    icl_pool: Sequence[int] | None = None,
):
    """Activations at the word token of each word's first-letter prompt, shape (len(word_ids), d).

    In-context examples are drawn from `icl_pool` (by default the same word list), never the word
    itself, seeded.
    """
    import torch

    rng = random.Random(seed)
    pool = list(word_ids if icl_pool is None else icl_pool)
    prompts = []
    for word_id in word_ids:
        icl = [w for w in rng.sample(pool, min(n_icl + 1, len(pool))) if w != word_id][:n_icl]
        prompts.append(word_prompt_tokens(model.tokenizer, word_id, icl))
    outputs = []
    pad = model.tokenizer.pad_token_id
    for start in range(0, len(prompts), batch_size):
        # The model is causal, so the word token's activation depends only on the tokens up to it:
        # the question after it is not run, and right padding is harmless.
        chunk = [(toks[: pos + 1], pos) for toks, pos in prompts[start : start + batch_size]]
        width = max(len(toks) for toks, _ in chunk)
        batch = torch.tensor([toks + [pad] * (width - len(toks)) for toks, _ in chunk], device=model.cfg.device)
        positions = torch.tensor([pos for _, pos in chunk], device=model.cfg.device)
        with torch.no_grad():
            _, cache = model.run_with_cache(batch, names_filter=hook_name, stop_at_layer=_stop_layer(model, hook_name))
        acts = cache[hook_name]
        outputs.append(acts[torch.arange(len(chunk)), positions].float().cpu())
    return torch.cat(outputs)


def _stop_layer(model, hook_name: str) -> int | None:
    """Run only as far as the hook needs (blocks.N.* needs blocks 0..N)."""
    parts = hook_name.split(".")
    if parts[0] == "blocks" and parts[1].isdigit():
        return min(int(parts[1]) + 1, model.cfg.n_layers)
    return None


def first_letter_probe_f1(model, hook_name: str, *, seed: int = 42, test_fraction: float = 0.2) -> dict[str, float]:
    """Held-out F1 per letter of a linear first-letter probe on the word token's activation.

    The check the built-in model must pass for absorption to be measurable on it: a multinomial
    logistic regression trained on 80% of the alphabetic vocabulary, scored on the other 20%.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    vocab = alphabetic_vocab(model.tokenizer)
    train, test = train_test_split_words(vocab, test_fraction, seed)
    x_train = word_activations(model, hook_name, [i for i, _ in train], seed=seed).numpy()
    x_test = word_activations(model, hook_name, [i for i, _ in test], seed=seed + 1).numpy()
    y_train = np.array([first_letter(w) for _, w in train])
    y_test = np.array([first_letter(w) for _, w in test])
    scaler = StandardScaler().fit(x_train)
    probe = LogisticRegression(C=0.1, max_iter=2000, random_state=seed)
    probe.fit(scaler.transform(x_train), y_train)
    predicted = probe.predict(scaler.transform(x_test))
    letters = sorted(set(y_test))
    scores = f1_score(y_test, predicted, labels=letters, average=None, zero_division=0.0)
    return {letter: float(score) for letter, score in zip(letters, scores, strict=True)}
