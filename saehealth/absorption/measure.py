"""`measure_absorption`: SAEBench 0.6's first-letter absorption of one SAE, averaged over word splits.

Absorption depends on which words train the probes as much as on the SAE, so the metric is the mean
over `n_splits` independent 80/20 splits of the vocabulary, and `uncertainty["absorption_fraction"]` is
the standard error of that mean (standard deviation of the per-split values over sqrt(splits)). The
model-level work (prompting, letter probes per split) is cached, so further SAEs at the hook pay only
for the SAE-level half of each split.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from saehealth.absorption import cache, words
from saehealth.absorption.probes import DEFAULT_SCHEDULE, LETTER_PROBE, SCHEDULES, train_probes
from saehealth.absorption.scoring import Thresholds, binary_f1, encode_words, find_main_latents, letter_absorption
from saehealth.errors import IncompatibleSAEError

METRIC_KEYS = ("absorption_fraction", "full_absorption_rate", "mean_num_split_features", "absorption_letters_scored")
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
    """How absorption is measured. `n_splits` = 5: see the README for the spread it was chosen from."""

    schedule: str = DEFAULT_SCHEDULE
    n_splits: int = 5
    min_letters: int = 20  # min_feats_for_eval
    thresholds: Thresholds = field(default_factory=Thresholds)
    prompt_batch_size: int = 64
    l1_max_steps: int = 60

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown probe schedule {self.schedule!r}: choose from {', '.join(SCHEDULES)}")


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

    `splits` (indices into the word list of `words.saebench_vocab`) replaces the seeded splits, e.g. to
    use SAEBench's own; such probes are not cached. `device` is where probes and projections run.
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
    notes: list[str] = []
    store = _Store(cache_dir, model, hook_name, seed, notes)
    data = store.words(lambda: gather_words(model, hook_name, seed=seed, batch_size=settings.prompt_batch_size))
    if splits is None:
        splits = words.word_splits(len(data.word_ids), settings.n_splits, seed)
        probes = store.probes(settings, lambda: train_letter_probes(data, splits, settings.schedule, seed=seed))
    else:
        probes = train_letter_probes(data, splits, settings.schedule, seed=seed)
    result = compute_absorption(data, probes, splits, sae, settings=settings, device=device, seed=seed)
    result.notes[:0] = notes
    result.seconds = time.perf_counter() - started
    return result


def gather_words(model, hook_name: str, *, seed: int, batch_size: int = 64) -> cache.WordData:
    """Prompt the model on every SAEBench word twice (probe prompts, absorption prompts) and read the hook."""
    vocab = words.saebench_vocab(model.tokenizer)
    ids = [i for i, _ in vocab]
    labels = torch.tensor([words.letter_index(text) for _, text in vocab], dtype=torch.int64)
    probe = words.word_activations(model, hook_name, ids, ids, seed=seed, batch_size=batch_size)
    absorb = words.word_activations(model, hook_name, ids, ids, seed=seed + 1, batch_size=batch_size)
    return cache.WordData(torch.tensor(ids, dtype=torch.int64), labels, probe, absorb)


def train_letter_probes(
    data: cache.WordData, splits: list[tuple[np.ndarray, np.ndarray]], schedule: str, *, seed: int
) -> cache.LetterProbes:
    """SAEBench's 26 one-vs-rest letter probes on each split's training words, and their held-out F1."""
    d = data.probe_acts.shape[1]
    weight = torch.zeros(len(splits), 26, d)
    bias = torch.zeros(len(splits), 26)
    f1 = torch.full((len(splits), 26), float("nan"), dtype=torch.float64)
    for s, (train, test) in enumerate(splits):
        train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)
        y = torch.nn.functional.one_hot(data.labels[train_t], 26).bool()
        trainable = torch.nonzero(y.any(0) & ~y.all(0)).flatten()
        probes = train_probes(data.probe_acts[train_t], y[:, trainable], LETTER_PROBE, schedule, seed=seed + s)
        weight[s, trainable], bias[s, trainable] = probes.weight.cpu(), probes.bias.cpu()
        test_y = torch.nn.functional.one_hot(data.labels[test_t], 26).bool()
        predicted = (data.probe_acts[test_t] @ weight[s].T + bias[s]) > 0
        scored = test_y.any(0)
        scored[[i for i in range(26) if i not in set(trainable.tolist())]] = False
        f1[s] = torch.where(scored, binary_f1(test_y, predicted), torch.full((26,), float("nan"), dtype=torch.float64))
    return cache.LetterProbes(weight, bias, f1)


def compute_absorption(
    data: cache.WordData,
    probes: cache.LetterProbes,
    splits: list[tuple[np.ndarray, np.ndarray]],
    sae,
    *,
    settings: AbsorptionSettings | None = None,
    device: str | torch.device = "cpu",
    seed: int = 42,
) -> AbsorptionResult:
    """The SAE-level half on every split, and their mean with its standard error."""
    settings = settings or AbsorptionSettings()
    th = settings.thresholds
    device = torch.device(device)
    latents, _ = encode_words(sae, data.probe_acts, device)
    abs_latents, abs_inputs = encode_words(sae, data.absorption_acts, device)
    decoder = sae.W_dec.detach().float().to(device)
    labels = data.labels.to(device)
    per_split, notes, reason = [], [], None
    l1_fits = l1_unconverged = 0
    for s, (train, test) in enumerate(splits):
        f1 = probes.f1[s]
        letters = [i for i in range(26) if f1[i] > th.min_probe_f1]
        values = _split_arrays(f1)
        if len(letters) < settings.min_letters:
            reason = f"only {len(letters)} letters had probe F1 > {th.min_probe_f1} (minimum {settings.min_letters})"
            per_split.append(values)
            continue
        train_t, test_t = torch.as_tensor(train, device=device), torch.as_tensor(test, device=device)
        main = find_main_latents(
            _rows(latents, train_t),
            labels[train_t],
            _rows(latents, test_t),
            labels[test_t],
            letters,
            schedule=settings.schedule,
            seed=seed + s,
            thresholds=th,
            l1_max_steps=settings.l1_max_steps,
        )
        l1_fits += len(letters)
        l1_unconverged += int((~main.l1_converged).sum())
        scores = data.probe_acts[test] @ probes.weight[s].T + probes.bias[s]  # (n_test, 26)
        for j, letter in enumerate(letters):
            main_ids = [int(i) for i in main.ids[j] if i >= 0]
            values["num_split_features"][letter] = len(main_ids)
            tp = torch.as_tensor(test)[(data.labels[test] == letter) & (scores[:, letter] > 0)].to(device)
            values["num_probe_true_positives"][letter] = len(tp)
            if len(tp) == 0:
                continue
            total, n_full = letter_absorption(
                abs_inputs[tp], _rows(abs_latents, tp), probes.weight[s, letter], decoder, main_ids, th
            )
            values["absorption_fraction"][letter] = total / len(tp)
            values["num_full_absorption"][letter] = n_full
            values["full_absorption_rate"][letter] = n_full / len(tp)
        values["main_latents"] = main.ids
        values["letters"] = letters
        per_split.append(values)
    if l1_unconverged:
        notes.append(
            f"Absorption: {l1_unconverged} of {l1_fits} L1 probe fits stopped at the {settings.l1_max_steps}-step "
            "cap before their optimality conditions held."
        )
    return _combine(per_split, settings, reason, notes)


def _rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return x.to_sparse_coo().index_select(0, rows.to(x.device)).coalesce().to_sparse_csr()


def _split_arrays(f1: torch.Tensor) -> dict:
    values = {name: np.full(26, np.nan) for name in PER_LETTER_FLOATS}
    values["probe_f1"] = f1.numpy().astype(np.float64)
    return values


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
    per_letter["main_latents"] = measured[0]["main_latents"].numpy()
    per_letter["split_absorption_fraction"] = split_means["absorption_fraction"]
    return AbsorptionResult(metrics, uncertainty, None, per_letter, notes, settings.schedule)


def _empty_per_letter(settings: AbsorptionSettings) -> dict[str, np.ndarray]:
    arrays = {name: np.full(26, np.nan) for name in PER_LETTER_FLOATS}
    arrays["main_latents"] = np.full((26, settings.thresholds.max_k), -1, dtype=np.int64)
    return arrays


class _Store:
    """The cache folder for one (model, hook, seed), or nothing when there is none or it cannot be used."""

    def __init__(self, folder: Path | None, model, hook_name: str, seed: int, notes: list[str]):
        self.folder, self.model, self.hook, self.seed, self.notes = folder, model, hook_name, seed, notes
        self.key = cache.model_fingerprint(model) if folder is not None else ""

    def words(self, build) -> cache.WordData:
        d, vocab = self.model.cfg.d_model, len(self.model.tokenizer)
        path = self._path("words", {"n_icl": words.N_ICL, "template": words.PROMPT_TEMPLATE})
        return self._get(path, lambda p: cache.read_words(p, d, vocab), build, lambda data: vars(data))

    def probes(self, settings: AbsorptionSettings, build) -> cache.LetterProbes:
        extra = {"schedule": settings.schedule, "n_splits": settings.n_splits, "n_icl": words.N_ICL}
        path = self._path("probes", extra)
        d = self.model.cfg.d_model
        return self._get(path, lambda p: cache.read_probes(p, settings.n_splits, d), build, lambda pr: vars(pr))

    def _path(self, kind: str, extra: dict) -> Path | None:
        if self.folder is None:
            return None
        return Path(self.folder) / f"{cache.entry_stem(kind, self.key, self.hook, self.seed, extra)}.safetensors"

    def _get(self, path: Path | None, read, build, tensors):
        if path is not None and path.exists():
            try:
                return read(path)
            except cache.CacheProblem as exc:
                self.notes.append(f"Absorption cache entry {path} was unusable ({exc}): rebuilt it.")
        value = build()
        if path is not None:
            try:
                write = {k: v.cpu() for k, v in tensors(value).items()}
                cache.write_entry(path, write, {"hook_name": self.hook, "seed": str(self.seed)})
            except OSError as exc:
                self.notes.append(
                    f"Could not write the absorption cache in {self.folder} ({exc.strerror or exc}): ran without it."
                )
        return value
