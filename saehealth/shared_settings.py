"""What several SAEs evaluated together must share: one model (loaded one way), one context length, one dataset.

`saehealth compare` and an eval of a run folder score every SAE on identical tokens; these functions settle the
shared settings from the options, else from what the checkpoints record, and refuse SAEs that disagree.
"""

from __future__ import annotations

from saehealth import planning
from saehealth.config import EvalConfig
from saehealth.errors import ConfigError


def shared_model(options: EvalConfig, named: list[tuple[str, object]]) -> str:
    """--model, else the one model every SAE that names one was trained on."""
    if options.model:
        return options.model
    by_model: dict[str, list[str]] = {}
    for name, loaded in named:
        if loaded.model_name:
            by_model.setdefault(loaded.model_name, []).append(name)
    if not by_model:
        raise ConfigError("None of the SAEs says which model it was trained on: pass --model NAME.")
    if len(by_model) > 1:
        raise ConfigError(
            f"The SAEs were trained on different models ({grouped(by_model)}): evaluate SAEs of one model together, "
            "or pass --model NAME to evaluate them all on it."
        )
    return next(iter(by_model))


def shared_model_kwargs(named: list[tuple[str, object]]) -> dict:
    """The one way of loading the model that every SAE was trained with (its weight processing)."""
    from saehealth.models import processing_label

    by_processing: dict[str, list[str]] = {}
    for name, loaded in named:
        by_processing.setdefault(processing_label(loaded.model_from_pretrained_kwargs), []).append(name)
    if len(by_processing) > 1:
        raise ConfigError(
            f"The SAEs were trained on differently processed models ({grouped(by_processing)}; from their "
            "model_from_pretrained_kwargs): compare SAEs trained on the same activations, in separate runs."
        )
    return named[0][1].model_from_pretrained_kwargs


def shared_context(template: EvalConfig, model, named: list[tuple[str, object]]) -> int:
    """The context length every SAE is evaluated at: --context-length, else the one the SAEs record (after
    capping at the model's context, as eval does); SAEs that record none go along with the rest. The shared
    sequences' other setting, BOS at their start, must be the same for every SAE too (`shared_prepend_bos`)."""
    shared_prepend_bos(model, named)
    first = named[0][1]
    if template.context_length is not None:
        return planning.context_length(template, model, first)
    by_context: dict[int, list[str]] = {}
    for name, loaded in named:
        if loaded.context_size:
            by_context.setdefault(planning.context_length(template, model, loaded), []).append(name)
    if len(by_context) > 1:
        raise ConfigError(
            f"The SAEs were trained on different context lengths ({grouped(by_context)}): "
            "pass --context-length N to evaluate them all on N-token sequences."
        )
    return next(iter(by_context)) if by_context else planning.context_length(template, model, first)


def shared_prepend_bos(model, named: list[tuple[str, object]]) -> bool:
    """Whether the shared sequences start with BOS: every SAE must agree (its prepend_bos, else the family's)."""
    by_bos: dict[str, list[str]] = {}
    for name, loaded in named:
        by_bos.setdefault(f"prepend_bos={planning.prepend_bos_of(loaded, model)}", []).append(name)
    if len(by_bos) > 1:
        raise ConfigError(
            f"The SAEs were trained with and without BOS at the start of each sequence ({grouped(by_bos)}): "
            "compare them in separate runs."
        )
    return planning.prepend_bos_of(named[0][1], model)


def shared_dataset(template: EvalConfig, model_name: str, named: list[tuple[str, object]]) -> tuple[str, str, list]:
    """(dataset, split, notes) from the options, else the first SAE that records a dataset."""
    first_error = None
    for name, loaded in named:
        notes: list[str] = []
        try:
            dataset, split = planning.dataset_choice(template, model_name, loaded, notes)
        except ConfigError as exc:
            first_error = first_error or exc
            continue
        if template.dataset is None and dataset == loaded.dataset_path:
            others = sorted({item.dataset_path for _, item in named if item.dataset_path not in (None, dataset)})
            if others:
                notes.append(
                    f"The SAEs record different training datasets ({', '.join([dataset, *others])}): all are "
                    f"evaluated on {dataset}, the one {name} records; pass --dataset to choose another."
                )
        return dataset, split, notes
    raise ConfigError("None of the SAEs records its training dataset: pass --dataset NAME.") from first_error


def grouped(by_value: dict) -> str:
    """'X: a, b; Y: c' with at most three names per value."""
    parts = []
    for value, names in by_value.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{value}: {shown}")
    return "; ".join(parts)
