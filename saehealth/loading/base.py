"""The shared shape of every checkpoint adapter: what a load returns, what an adapter provides, the registry.

Each source library gets one small adapter module that turns its files into a SAELens `SAE` computing exactly
what the library's own forward computes. Adapters register themselves by name in `ADAPTERS`, a registry that
refuses duplicate names; an unknown name is a `ConfigError` listing the valid ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from saehealth.errors import ConfigError, suggest

if TYPE_CHECKING:
    from sae_lens import SAE


@dataclass
class LoadedSAE:
    """A checkpoint converted into a SAELens SAE, with what the checkpoint says about itself.

    `sae` is in eval mode on the requested device and dtype. `hook_name` is the TransformerLens hook whose
    activation the SAE encodes (None when the checkpoint does not say); for transcoders `output_hook_name` is
    the hook whose activation the decoder output replaces. `training` holds what the checkpoint records about
    training (tokens, lr, l1 coefficient, k, ...); `notes` says what was converted or assumed on the way.
    """

    sae: SAE
    source_library: str
    format: str
    architecture: str
    hook_name: str | None
    output_hook_name: str | None = None
    model_name: str | None = None
    context_size: int | None = None
    dataset_path: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    path: str | None = None  # the file or folder the weights came from
    route: Any = None  # routed SAEs only: the router and its layers (saehealth.routed.spec.RouteSpec)
    recorded_dtype: str | None = None  # the dtype the checkpoint's config records (SAELens cfg.json `dtype`)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    @property
    def d_sae(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def model_from_pretrained_kwargs(self) -> dict:
        """How the model was loaded for training (SAELens `model_from_pretrained_kwargs`); {} when not recorded."""
        value = getattr(getattr(self.sae.cfg, "metadata", None), "model_from_pretrained_kwargs", None)
        return dict(value) if isinstance(value, dict) else {}

    def training_dtype(self) -> tuple[str, str] | None:
        """(dtype, where the checkpoint records it) of the SAE's training: the model's dtype in its
        model_from_pretrained_kwargs (`dtype` or `torch_dtype`), else the SAE's config (`recorded_dtype`, SAELens
        cfg.json `dtype`); None when neither names a known dtype."""
        from saehealth.loading.files import DTYPES

        kwargs = self.model_from_pretrained_kwargs
        for key in ("dtype", "torch_dtype"):
            name = str(kwargs.get(key, "")).removeprefix("torch.")
            if name in DTYPES:
                return name, f"model_from_pretrained_kwargs {key}"
        if self.recorded_dtype in DTYPES:
            return self.recorded_dtype, "the SAE's cfg.json dtype"
        return None

    @property
    def prepend_bos(self) -> bool | None:
        """Whether the SAE's training sequences began with BOS (SAELens `prepend_bos`); None when not recorded."""
        value = getattr(getattr(self.sae.cfg, "metadata", None), "prepend_bos", None)
        return value if isinstance(value, bool) else None

    @property
    def hook_head_index(self) -> int | None:
        """The one attention head the SAE reads and writes (SAELens `hook_head_index`), or None."""
        value = getattr(getattr(self.sae.cfg, "metadata", None), "hook_head_index", None)
        return None if value is None else int(value)


@dataclass(frozen=True)
class LoadRequest:
    """What the caller asked for, passed unchanged to the adapter."""

    hook: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    select: str | None = None
    release: str | None = None
    sae_id: str | None = None
    route: str | None = None  # routed SAEs: settings the checkpoint lacks (`--route`, saehealth.routed.options)
    # Routed SAEs only: their comma-separated hooks, where `hook` is left to single-hook SAEs (compare's --hook list).
    routed_hooks: str | None = None


class Adapter(ABC):
    """Turns one library's checkpoint layout into `LoadedSAE`s.

    `detect` must be cheap and must not raise for paths it does not recognise; `load` raises
    `CheckpointError` / `IncompatibleSAEError` with a one-line message naming the problem and the fix.
    """

    name: ClassVar[str]
    source_library: ClassVar[str]
    # What this format looks like on disk, for "no recognisable checkpoint" messages.
    expected: ClassVar[str]
    # Detection order: lower first (a SAELens training checkpoint must be tried before a plain SAELens folder).
    priority: ClassVar[int]

    @abstractmethod
    def detect(self, path: Path) -> bool:
        """True when `path` (a file or a folder) looks like this format."""

    @abstractmethod
    def load(self, path: Path, request: LoadRequest) -> LoadedSAE | list[LoadedSAE]:
        """Load the checkpoint at `path` (a list only for folders holding several SAEs)."""


T = TypeVar("T")


class Registry(Generic[T]):
    """Named items; duplicate names are refused, unknown names listed with hints.

    Items are kept in registration order, or sorted by `order` (a key function of the item) when given.
    """

    def __init__(self, kind: str, order: Callable[[T], Any] | None = None):
        self.kind = kind
        self._order = order
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered.")
        self._items[name] = item
        if self._order is not None:
            order = self._order
            self._items = dict(sorted(self._items.items(), key=lambda pair: order(pair[1])))
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            valid = ", ".join(self._items)
            raise ConfigError(
                f"Unknown {self.kind} {name!r}: choose from {valid}.{suggest(name, self._items)}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items


# Kept in detection order: lower `priority` first.
ADAPTERS: Registry[Adapter] = Registry("checkpoint format", order=lambda adapter: adapter.priority)


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: instantiate the adapter and register it under `cls.name`."""
    ADAPTERS.register(cls.name, cls())
    return cls


def adapters_in_detection_order() -> list[Adapter]:
    """The registered adapters, lowest `priority` first."""
    return [adapter for _, adapter in ADAPTERS.items()]
