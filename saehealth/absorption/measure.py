"""`measure_absorption`: SAEBench 0.6's first-letter absorption of one SAE, averaged over word splits.

Absorption depends on which words train the probes and on the prompts' random examples as much as on
the SAE, so each word split is a full, independent run of SAEBench's procedure (its own prompts, letter
probes, k-sparse probes and absorption step), the metric is the mean over `n_splits` splits, and
`uncertainty["absorption_fraction"]` is the standard error of that mean (standard deviation of the
per-split values over sqrt(splits)). The model-level half of each split (prompting, letter probes) is
cached, so further SAEs at the hook pay only for the SAE-level half.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import saehealth.absorption.cache as cache
import saehealth.absorption.words as words
from saehealth.absorption.cache import LetterProbes, SplitWords
from saehealth.absorption.ksparse import find_main_latents
from saehealth.absorption.probes import DEFAULT_SCHEDULE, LETTER_PROBE, SCHEDULES, train_probes
from saehealth.absorption.scoring import Thresholds, binary_f1, encode_words, letter_absorption, select_rows
from saehealth.errors import IncompatibleSAEError

METRIC_KEYS = ("absorption_fraction", "full_absorption_rate", "mean_num_split_features", "absorption_letters_scored")
SMALL_MODEL = 512  # d_model below which the prompts run on one CPU thread (see _one_cpu_thread)
RESIDUAL_HOOK = re.compile(r"^blocks\.\d+\.hook_resid_(pre|mid|post)$")
# Per-letter arrays (float64, (26,), A..Z, mean over the splits that scored the letter, NaN where none did).
PER_LETTER_FLOATS = (
    "probe_f1",
    "absorption_fraction",
    "full_absorption_rate",
    "num_full_absorption",
    "num_probe_true_positives",
    "num_split_features",
)


@dataclass(frozen=True)
class AbsorptionSettings:
    """How absorption is measured. `n_splits`: see the README for the spread and cost it was chosen from."""

    schedule: str = DEFAULT_SCHEDULE
    n_splits: int = 5
    min_letters: int = 20  # min_feats_for_eval
    thresholds: Thresholds = field(default_factory=Thresholds)
    prompt_batch_size: int = 16  # prompt prefixes per forward pass (x GROUP_SIZE prompts): 64 is 2x slower on CPU
    l1_max_steps: int = 60

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown probe schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}")
        if self.n_splits < 1:
            raise ValueError("absorption needs at least one word split")


@dataclass
class AbsorptionResult:
    """Metric values (METRIC_KEYS), their standard errors, why they are missing, per-letter arrays, notes."""

    metrics: dict[str, float | int | None]
    uncertainty: dict[str, float]
    not_measured_reason: str | None
    per_letter: dict[str, np.ndarray]
    notes: list[str]
    schedule: str
    seconds: float = 0.0


def absorption_applicable(hook_name: str) -> str | None:
    """None if first-letter absorption applies at this hook, else the reason it does not."""
    if RESIDUAL_HOOK.match(hook_name):
        return None
    return (
        f"absorption is defined for residual-stream SAEs (blocks.N.hook_resid_pre/mid/post); "
        f"{hook_name} is not a residual-stream hook"
    )


def measure_absorption(
    model,
    sae,
    hook_name: str,
    *,
    seed: int = 42,
    cache_dir: Path | None = None,
    device: str = "cpu",
    settings: AbsorptionSettings | None = None,
    splits: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> AbsorptionResult:
    """First-letter absorption of `sae` at `hook_name` of `model` (a HookedTransformer).

    `splits` (train and test indices into `words.saebench_vocab`'s list) replaces the seeded splits,
    e.g. to use SAEBench's own; such splits are not cached. `device` is where probes and projections run.
    """
    from saehealth.models import check_hook

    started = time.perf_counter()
    settings = settings or AbsorptionSettings()
    reason = absorption_applicable(hook_name)
    if reason is not None:
        return AbsorptionResult(
            dict.fromkeys(METRIC_KEYS), {}, reason, _empty_per_letter(settings), [], settings.schedule
        )
    check_hook(model, hook_name)
    if sae.cfg.d_in != model.cfg.d_model:
        raise IncompatibleSAEError(
            f"The SAE reads {sae.cfg.d_in}-dimensional activations but {hook_name} has {model.cfg.d_model}: "
            "evaluate it on the model it was trained on."
        )
    vocab = words.saebench_vocab(model.tokenizer)
    word_ids = torch.tensor([i for i, _ in vocab], dtype=torch.int64)
    labels = torch.tensor([words.letter_index(text) for _, text in vocab], dtype=torch.int64)
    notes: list[str] = []
    store = cache.Store(None if splits is not None else cache_dir, model, hook_name, seed, notes)
    if splits is None:
        splits = words.word_splits(len(vocab), settings.n_splits, seed)
    d = model.cfg.d_model
    prompted, probes = [], []
    for s, (train, test) in enumerate(splits):
        train_t, test_t = torch.as_tensor(train, dtype=torch.int64), torch.as_tensor(test, dtype=torch.int64)
        data = store.fetch(
            "words",
            s,
            {"n_icl": words.N_ICL, "template": words.PROMPT_TEMPLATE, "group": words.GROUP_SIZE},
            lambda path, tr=train_t, te=test_t: cache.read_words(path, tr, te, d),
            lambda tr=train_t, te=test_t, s=s: prompt_split(
                model,
                hook_name,
                word_ids,
                tr,
                te,
                seed=words.split_seed(seed, s),
                batch_size=settings.prompt_batch_size,
            ),
        )
        fitted = store.fetch(
            "probes",
            s,
            {"schedule": settings.schedule, "group": words.GROUP_SIZE},
            lambda path: cache.read_probes(path, d),
            lambda data=data, s=s: train_letter_probes(
                data, labels, settings.schedule, seed=words.split_seed(seed, s), init=probes[-1] if probes else None
            ),
        )
        prompted.append(data)
        probes.append(fitted)
    result = score_splits(labels, prompted, probes, sae, settings=settings, device=device, seed=seed)
    result.notes[:0] = notes
    result.seconds = time.perf_counter() - started
    return result


@contextmanager
def _one_cpu_thread(device, applies: bool = True) -> Iterator[None]:
    """One torch thread while small work runs on the CPU (and `applies`).

    The probes, and a narrow model's prompts, are thousands of small tensor operations: CPU threads
    synchronising cost more than they gain. Demo SAE, 5 splits, 2 cores shared with other jobs: probes
    29 s of CPU cold with 2 threads against 4 s with one; the built-in model's (d_model 128) prompts
    74 s against 2.6 s. A model of width SMALL_MODEL or more prompts on the caller's threads.
    """
    if torch.device(device).type != "cpu" or not applies:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def prompt_split(
    model, hook_name: str, word_ids: torch.Tensor, train: torch.Tensor, test: torch.Tensor, *, seed: int, batch_size=16
) -> SplitWords:
    """SAEBench's prompts for one split: training words with examples from the training words, test words
    from the test words, and the test words again, with examples from every word, for the absorption step."""
    ids = word_ids.tolist()
    train_ids, test_ids = [ids[i] for i in train.tolist()], [ids[i] for i in test.tolist()]
    acts = torch.zeros(len(ids), model.cfg.d_model)
    with _one_cpu_thread(model.cfg.device, applies=model.cfg.d_model < SMALL_MODEL):
        for rows, chosen, part in ((train, train_ids, 0), (test, test_ids, 1)):
            acts[rows] = words.word_activations(
                model, hook_name, chosen, chosen, seed=seed + part, batch_size=batch_size
            )
        absorption = words.word_activations(model, hook_name, test_ids, ids, seed=seed + 2, batch_size=batch_size)
    return SplitWords(train.clone(), test.clone(), acts, absorption)


def train_letter_probes(
    data: SplitWords, labels: torch.Tensor, schedule: str, *, seed: int, init: LetterProbes | None = None
) -> LetterProbes:
    """SAEBench's 26 one-vs-rest letter probes on the split's training words, and their held-out F1.

    `init` (another split's probes) starts the converged schedule closer to its optimum; the optimum
    does not depend on it.
    """
    with _one_cpu_thread("cpu"):
        return _train_letter_probes(data, labels, schedule, seed=seed, init=init)


def _train_letter_probes(data: SplitWords, labels: torch.Tensor, schedule: str, *, seed: int, init) -> LetterProbes:
    d = data.probe_acts.shape[1]
    weight, bias = torch.zeros(26, d), torch.zeros(26)
    y = torch.nn.functional.one_hot(labels[data.train], 26).bool()
    trainable = torch.nonzero(y.any(0) & ~y.all(0)).flatten()
    start = None if init is None else (init.weight[trainable], init.bias[trainable])
    fitted = train_probes(data.probe_acts[data.train], y[:, trainable], LETTER_PROBE, schedule, seed=seed, init=start)
    weight[trainable], bias[trainable] = fitted.weight.cpu(), fitted.bias.cpu()
    test_y = torch.nn.functional.one_hot(labels[data.test], 26).bool()
    predicted = (data.probe_acts[data.test] @ weight.T + bias) > 0
    scored = test_y.any(0) & torch.isin(torch.arange(26), trainable)
    f1 = torch.where(scored, binary_f1(test_y, predicted), torch.full((26,), float("nan"), dtype=torch.float64))
    return LetterProbes(weight, bias, f1)


def score_splits(
    labels: torch.Tensor,
    prompted: list[SplitWords],
    probes: list[LetterProbes],
    sae,
    *,
    settings: AbsorptionSettings | None = None,
    device: str | torch.device = "cpu",
    seed: int = 42,
) -> AbsorptionResult:
    """The SAE-level half on every split, and their mean with its standard error."""
    with _one_cpu_thread(device):
        return _score_splits(labels, prompted, probes, sae, settings or AbsorptionSettings(), device, seed)


def _score_splits(labels, prompted, probes, sae, settings: AbsorptionSettings, device, seed: int) -> AbsorptionResult:
    device = torch.device(device)
    per_split, notes, reason = [], [], None
    l1_fits = l1_unconverged = 0
    warm = None  # the previous split's L1 probes (26, d_sae + 1): the next split starts from them
    for s, (data, fitted) in enumerate(zip(prompted, probes, strict=True)):
        values, warm, missing = _score_split(
            labels, data, fitted, sae, settings=settings, device=device, seed=words.split_seed(seed, s), warm=warm
        )
        per_split.append(values)
        reason = missing or reason
        if "l1_converged" in values:
            l1_fits += len(values["l1_converged"])
            l1_unconverged += int((~values["l1_converged"]).sum())
    if l1_unconverged:
        notes.append(
            f"Absorption: {l1_unconverged} of {l1_fits} L1 probe fits stopped at the {settings.l1_max_steps}-step "
            "cap before their optimality conditions held."
        )
    return _combine(per_split, settings, reason, notes)


def _score_split(labels, data: SplitWords, fitted: LetterProbes, sae, *, settings, device, seed, warm):
    """One split's per-letter arrays, the L1 probes to start the next split from, and why it was not scored."""
    th = settings.thresholds
    letters = [i for i in range(26) if fitted.f1[i] > th.min_probe_f1]
    values = {name: np.full(26, np.nan) for name in PER_LETTER_FLOATS}
    values["probe_f1"] = fitted.f1.numpy().astype(np.float64)
    if len(letters) < settings.min_letters:
        reason = f"only {len(letters)} letters had probe F1 > {th.min_probe_f1} (minimum {settings.min_letters})"
        return values, warm, reason
    latents, _ = encode_words(sae, data.probe_acts, device)
    abs_latents, abs_inputs = encode_words(sae, data.absorption_acts, device)
    if abs_latents.shape[0] * abs_latents.shape[1] <= 2**22:  # small enough to hold dense: cheaper row reads
        abs_latents = abs_latents.to_dense()
    unit_decoder = torch.nn.functional.normalize(sae.W_dec.detach().float().to(device), dim=-1)
    labels_d = labels.to(device)
    train, test = data.train.to(device), data.test.to(device)
    main = find_main_latents(
        select_rows(latents, train),
        labels_d[train],
        select_rows(latents, test),
        labels_d[test],
        letters,
        schedule=settings.schedule,
        seed=seed,
        thresholds=th,
        l1_max_steps=settings.l1_max_steps,
        warm=warm,
    )
    test_labels = labels[data.test]
    scores = data.probe_acts[data.test] @ fitted.weight.T + fitted.bias  # (n_test, 26)
    values["main_latents"] = np.full((26, th.max_k), -1, dtype=np.int64)  # A..Z rows, -1 where not scored
    values["absorbing_latents"] = np.full((26, th.max_absorbers), -1, dtype=np.int64)
    for j, letter in enumerate(letters):
        values["main_latents"][letter, : main.ids.shape[1]] = main.ids[j].cpu().numpy()
        main_ids = [int(i) for i in main.ids[j] if i >= 0]
        values["num_split_features"][letter] = len(main_ids)
        # SAEBench's potential false negatives: held-out words of the letter that its probe detects.
        tp = torch.nonzero((test_labels == letter) & (scores[:, letter] > 0)).flatten().to(device)
        values["num_probe_true_positives"][letter] = len(tp)
        if len(tp) == 0:
            continue
        total, n_full, tally = letter_absorption(
            abs_inputs[tp], select_rows(abs_latents, tp), fitted.weight[letter], unit_decoder, main_ids, th
        )
        top = tally.argsort(descending=True, stable=True)[: th.max_absorbers]
        top = top[tally[top] > 0].numpy()
        values["absorbing_latents"][letter, : len(top)] = top
        values["absorption_fraction"][letter] = total / len(tp)
        values["num_full_absorption"][letter] = n_full
        values["full_absorption_rate"][letter] = n_full / len(tp)
    values["letters"] = letters
    values["l1_converged"] = main.l1_converged
    return values, main.l1_warm, None


def _combine(per_split: list[dict], settings: AbsorptionSettings, reason: str | None, notes: list[str]):
    measured = [v for v in per_split if "letters" in v]
    metrics: dict[str, float | int | None] = dict.fromkeys(METRIC_KEYS)
    per_letter = _empty_per_letter(settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # a letter no split scored stays NaN
        for name in PER_LETTER_FLOATS:
            per_letter[name] = np.nanmean([v[name] for v in per_split], axis=0)
    scored_counts = [int(np.sum(v["probe_f1"] > settings.thresholds.min_probe_f1)) for v in per_split]
    metrics["absorption_letters_scored"] = int(np.median(scored_counts))
    if not measured:
        return AbsorptionResult(metrics, {}, reason, per_letter, notes, settings.schedule)
    if len(measured) < len(per_split):
        notes.append(
            f"Absorption: {len(per_split) - len(measured)} of {len(per_split)} word splits were not scored ({reason})."
        )
    split_means = {
        key: np.array([np.mean(v[name][v["letters"]]) for v in measured])
        for key, name in (
            ("absorption_fraction", "absorption_fraction"),
            ("full_absorption_rate", "full_absorption_rate"),
            ("mean_num_split_features", "num_split_features"),
        )
    }
    for key, values in split_means.items():
        metrics[key] = float(values.mean())
    uncertainty = {}
    if len(measured) >= 2:
        uncertainty["absorption_fraction"] = float(
            split_means["absorption_fraction"].std(ddof=1) / np.sqrt(len(measured))
        )
    # Latent ids are the first scored split's: another split's main latents may be this one's absorbers.
    per_letter["main_latents"] = measured[0]["main_latents"]
    per_letter["absorbing_latents"] = measured[0]["absorbing_latents"]
    per_letter["split_absorption_fraction"] = split_means["absorption_fraction"]
    return AbsorptionResult(metrics, uncertainty, None, per_letter, notes, settings.schedule)


def _empty_per_letter(settings: AbsorptionSettings) -> dict[str, np.ndarray]:
    arrays = {name: np.full(26, np.nan) for name in PER_LETTER_FLOATS}
    arrays["main_latents"] = np.full((26, settings.thresholds.max_k), -1, dtype=np.int64)
    arrays["absorbing_latents"] = np.full((26, settings.thresholds.max_absorbers), -1, dtype=np.int64)
    return arrays
