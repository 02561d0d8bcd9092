"""Stage kinds by name: the built-in ones and every installed plugin's.

Kinds are found through the ``tollbridge.stages`` entry-point group, each
entry naming a `StageKind` subclass; tollbridge's own kinds are listed there
in its pyproject.toml exactly like a plugin's, so the framework imports no
concrete provider or transport. A chain entry may also name a plain pipecat
processor class as ``module:Name`` (see `plain_processor`).
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from tollbridge.errors import TollbridgeError
from tollbridge.stage import StageKind

ENTRY_POINT_GROUP = "tollbridge.stages"


class RegistryError(TollbridgeError, RuntimeError):
    """A plugin entry point that cannot be loaded; the message names it and its package."""


class Registry:
    """Kind name → StageKind."""

    def __init__(self) -> None:
        self._kinds: dict[str, StageKind] = {}

    def register(self, kind: StageKind | type[StageKind]) -> StageKind:
        if isinstance(kind, type):
            kind = kind()
        existing = self._kinds.get(kind.name)
        if existing is not None and type(existing) is not type(kind):
            raise RegistryError(
                f"stage kind {kind.name!r} is registered twice: by "
                f"{_where(type(existing))} and by {_where(type(kind))}"
            )
        self._kinds[kind.name] = kind
        return kind

    def get(self, name: str) -> StageKind | None:
        return self._kinds.get(name)

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def kinds(self) -> Iterable[StageKind]:
        return (self._kinds[name] for name in self.names())


def _where(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _load(entry_point: EntryPoint) -> StageKind:
    package = entry_point.dist.name if entry_point.dist else "an unknown package"
    where = f"entry point {entry_point.name!r} = {entry_point.value!r} of {package}"
    try:
        loaded = entry_point.load()
    except Exception as error:
        raise RegistryError(f"{where} failed to load: {error!r}") from error
    if not (isinstance(loaded, type) and issubclass(loaded, StageKind)):
        raise RegistryError(f"{where} must name a StageKind subclass, not {loaded!r}")
    kind = loaded()
    if kind.name != entry_point.name:
        raise RegistryError(f"{where} names kind {kind.name!r}; the entry point must be named so")
    return kind


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry: every kind installed in the ``tollbridge.stages`` group."""
    global _default
    if _default is None:
        registry = Registry()
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            registry.register(_load(entry_point))
        _default = registry
    return _default
