"""`measure_absorption`: SAEBench 0.6's first-letter absorption of one SAE, over word splits, two estimators.

Absorption depends on which words train the probes and on the prompts' random examples as much as on
the SAE, so each word split is a full, independent run of SAEBench's procedure (its own prompts, letter
probes, k-sparse probes and absorption step). The per-letter rows pool the splits' words and the metric is
the mean of the rows (aggregate.py); `uncertainty["absorption_fraction"]` is its standard error (the spread
of the per-split values over sqrt(splits)).

Two estimators over the same splits, prompts and SAE encodings, differing only in the probe schedule
(probes.py): the headline `absorption_fraction` under `settings.schedule` (default `converged`, to rank
SAEs) and `absorption_fraction_saebench` under `saebench-0.6` (SAEBench's schedule, to compare with
published tables). The model-level half of each split (prompting, letter probes per schedule) is cached, so
further SAEs at the hook pay only for the SAE-level half.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import saehealth.absorption.cache as cache
import saehealth.absorption.words as words
from saehealth.absorption.aggregate import PER_LETTER_FLOATS, pool
from saehealth.absorption.cache import LetterProbes, SplitWords
from saehealth.absorption.letter_probes import fit_letter_probes, fit_letter_probes_together
from saehealth.absorption.probes import DEFAULT_SCHEDULE, SCHEDULES
from saehealth.absorption.scoring import Thresholds
from saehealth.absorption.splits import score_split
from saehealth.errors import IncompatibleSAEError

SAEBENCH_SCHEDULE = "saebench-0.6"
SAEBENCH_KEY = "absorption_fraction_saebench"  # the saebench-0.6 schedule's mean, beside the headline
METRIC_KEYS = (
    "absorption_fraction",
    "full_absorption_rate",
    "mean_num_split_features",
    "absorption_letters_scored",
    SAEBENCH_KEY,
)
SMALL_MODEL = 512  # d_model below which the prompts run on one CPU thread (see _one_cpu_thread)
RESIDUAL_HOOK = re.compile(r"^blocks\.\d+\.hook_resid_(pre|mid|post)$")


@dataclass(frozen=True)
class AbsorptionSettings:
    """How absorption is measured. `n_splits`: see the docs for the spread and cost it was chosen from.

    `saebench_too`: also run the saebench-0.6 schedule over the same splits (`absorption_fraction_saebench`);
    when `schedule` is saebench-0.6 the headline already is that estimator and it is computed once.
    """

    schedule: str = DEFAULT_SCHEDULE
    n_splits: int = 5
    min_letters: int = 20  # min_feats_for_eval
    thresholds: Thresholds = field(default_factory=Thresholds)
    prompt_batch_size: int = 16  # prompt prefixes per forward pass (x GROUP_SIZE prompts): 64 is 2x slower on CPU
    l1_max_steps: int = 60
    saebench_too: bool = True

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown probe schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}")
        if self.n_splits < 1:
            raise ValueError("absorption needs at least one word split")
        if self.min_letters < 1:
            raise ValueError("absorption needs a minimum of at least one letter")

    @property
    def schedules(self) -> tuple[str, ...]:
        """The schedules run: the headline one first, then saebench-0.6 when asked for and not the same."""
        if self.saebench_too and self.schedule != SAEBENCH_SCHEDULE:
            return (self.schedule, SAEBENCH_SCHEDULE)
        return (self.schedule,)


@dataclass
class AbsorptionResult:
    """Metric values (METRIC_KEYS), their standard errors, why each missing one is missing, per-letter arrays
    (the headline schedule's by name, the saebench-0.6 schedule's as `saebench_<name>`), notes."""

    metrics: dict[str, float | int | None]
    uncertainty: dict[str, float]
    not_measured: dict[str, str]
    per_letter: dict[str, np.ndarray]
    notes: list[str]
    schedule: str
    n_splits: int = 0
    seconds: float = 0.0

    @property
    def not_measured_reason(self) -> str | None:
        """Why the headline `absorption_fraction` is missing (None when it was measured)."""
        return self.not_measured.get("absorption_fraction")


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
            dict.fromkeys(METRIC_KEYS),
            {},
            dict.fromkeys(METRIC_KEYS, reason),
            _empty_per_letter(settings),
            [],
            settings.schedule,
            n_splits=settings.n_splits,
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
    prompted: list[SplitWords] = []
    for s, (train, test) in enumerate(splits):
        train_t, test_t = torch.as_tensor(train, dtype=torch.int64), torch.as_tensor(test, dtype=torch.int64)
        prompted.append(
            store.fetch(
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
        )
    probes = {
        schedule: _split_letter_probes(store, prompted, labels, schedule, seed) for schedule in settings.schedules
    }
    result = score_splits(labels, prompted, probes, sae, settings=settings, device=device, seed=seed)
    result.notes[:0] = notes
    result.seconds = time.perf_counter() - started
    return result


def _split_letter_probes(
    store: cache.Store, prompted: list[SplitWords], labels: torch.Tensor, schedule: str, seed: int
) -> list[LetterProbes]:
    """Each split's letter probes under `schedule`, from the cache or trained (and cached).

    Converged probes train split after split, each starting from the previous split's; saebench-0.6
    probes start from their own seeded initialisation, so the splits not cached train together.
    """
    d = prompted[0].probe_acts.shape[1] if prompted else 0
    extra = {"schedule": schedule, "group": words.GROUP_SIZE}
    read = lambda path: cache.read_probes(path, d)  # noqa: E731
    seeds = [words.split_seed(seed, s) for s in range(len(prompted))]
    if schedule == SAEBENCH_SCHEDULE:
        fitted: list[LetterProbes | None] = [store.read("probes", s, extra, read) for s in range(len(prompted))]
        missing = [s for s, probes in enumerate(fitted) if probes is None]
        if missing:
            trained = train_letter_probes_together(
                [prompted[s] for s in missing], labels, seeds=[seeds[s] for s in missing]
            )
            for s, probes in zip(missing, trained, strict=True):
                store.write("probes", s, extra, probes)
                fitted[s] = probes
        return fitted  # type: ignore[return-value]  # every split read or trained
    chain: list[LetterProbes] = []
    for s, data in enumerate(prompted):
        chain.append(
            store.fetch(
                "probes",
                s,
                extra,
                read,
                lambda data=data, s=s: train_letter_probes(
                    data, labels, schedule, seed=seeds[s], init=chain[-1] if chain else None
                ),
            )
        )
    return chain


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
        return fit_letter_probes(data, labels, schedule, seed=seed, init=init)


def train_letter_probes_together(
    datas: list[SplitWords], labels: torch.Tensor, *, seeds: list[int]
) -> list[LetterProbes]:
    """Each split's saebench-0.6 letter probes (`train_letter_probes`' result for each), trained in one loop."""
    with _one_cpu_thread("cpu"):
        return fit_letter_probes_together(datas, labels, seeds=seeds)


def score_splits(
    labels: torch.Tensor,
    prompted: list[SplitWords],
    probes: list[LetterProbes] | dict[str, list[LetterProbes]],
    sae,
    *,
    settings: AbsorptionSettings | None = None,
    device: str | torch.device = "cpu",
    seed: int = 42,
) -> AbsorptionResult:
    """The SAE-level half on every split under each schedule, pooled (aggregate.py) with standard errors.

    `probes`: each split's letter probes under `settings.schedule`, or schedule -> such a list (the
    saebench-0.6 schedule's gives `absorption_fraction_saebench`).
    """
    settings = settings or AbsorptionSettings()
    by_schedule = probes if isinstance(probes, dict) else {settings.schedule: probes}
    with _one_cpu_thread(device):
        return _score_splits(labels, prompted, by_schedule, sae, settings, torch.device(device), seed)


def _score_splits(labels, prompted, by_schedule, sae, settings: AbsorptionSettings, device, seed: int):
    th = settings.thresholds
    warm: dict[str, torch.Tensor | None] = dict.fromkeys(by_schedule)  # each split starts from the previous one's
    scores: dict[str, list] = {schedule: [] for schedule in by_schedule}
    for s, data in enumerate(prompted):
        split = score_split(
            labels,
            data,
            {schedule: fitted[s] for schedule, fitted in by_schedule.items()},
            sae,
            thresholds=th,
            min_letters=settings.min_letters,
            l1_max_steps=settings.l1_max_steps,
            device=device,
            seed=words.split_seed(seed, s),
            warm=warm,
        )
        for schedule, score in split.items():
            scores[schedule].append(score)
    pooled = {
        schedule: pool(runs, schedule=schedule, min_letters=settings.min_letters, min_probe_f1=th.min_probe_f1)
        for schedule, runs in scores.items()
    }
    notes = [note for p in pooled.values() for note in p.notes]
    fits = [c for runs in scores.values() for r in runs if r.l1_converged is not None for c in r.l1_converged]
    if unconverged := sum(not c for c in fits):
        notes.append(
            f"Absorption: {unconverged} of {len(fits)} L1 probe fits stopped at the {settings.l1_max_steps}-step "
            "cap before their optimality conditions held."
        )
    return _result(pooled, settings, len(prompted), notes)


def _result(pooled: dict, settings: AbsorptionSettings, n_splits: int, notes: list[str]) -> AbsorptionResult:
    """The headline schedule's metrics and per-letter arrays, and the saebench-0.6 schedule's beside them."""
    primary = pooled[settings.schedule]
    metrics: dict[str, float | int | None] = {**primary.metrics, "absorption_letters_scored": primary.letters_scored}
    uncertainty, not_measured = {}, {}
    if primary.standard_error is not None:
        uncertainty["absorption_fraction"] = primary.standard_error
    if primary.reason is not None:
        not_measured.update(
            dict.fromkeys(("absorption_fraction", "full_absorption_rate", "mean_num_split_features"), primary.reason)
        )
    per_letter = {**_empty_per_letter(settings), **primary.per_letter}
    saebench = pooled.get(SAEBENCH_SCHEDULE)
    metrics[SAEBENCH_KEY] = None
    if saebench is None:
        not_measured[SAEBENCH_KEY] = "the saebench-0.6 probe schedule was not run"
    else:
        metrics[SAEBENCH_KEY] = saebench.metrics["absorption_fraction"]
        if saebench.standard_error is not None:
            uncertainty[SAEBENCH_KEY] = saebench.standard_error
        if saebench.reason is not None:
            not_measured[SAEBENCH_KEY] = saebench.reason
        if saebench is not primary:  # a saebench-0.6 headline's arrays are these already (export.py reads them)
            per_letter.update({f"saebench_{name}": array for name, array in saebench.per_letter.items()})
    return AbsorptionResult(metrics, uncertainty, not_measured, per_letter, notes, settings.schedule, n_splits=n_splits)


def _empty_per_letter(settings: AbsorptionSettings) -> dict[str, np.ndarray]:
    """Per-letter arrays of a measurement that scored nothing: NaN rows, -1 latent ids."""
    arrays = {name: np.full(26, np.nan) for name in PER_LETTER_FLOATS}
    arrays["main_latents"] = np.full((26, settings.thresholds.max_k), -1, dtype=np.int64)
    arrays["absorbing_latents"] = np.full((26, settings.thresholds.max_absorbers), -1, dtype=np.int64)
    return arrays
