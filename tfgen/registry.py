"""Name -> component registries.

Every pluggable piece (likelihood, network, prior, inference scheme,
evaluation task) is a registry entry added with a decorator and looked up by
the name written in the TOML file.  Each entry carries its own typed config
dataclass, so the config layer can validate a section against the entry it
names without knowing anything else about it.

The ground floor: it imports nothing of tfgen's, so a component module registers itself
without importing anything above it.  The registries fill as the component modules are
imported; :mod:`tfgen.assemble` imports them all, then the plugins (:mod:`tfgen.plugins`),
whose entries carry the plugin they came from (:func:`registering_for`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")

#: the origin of tfgen's own entries
BUILT_IN = "built-in"


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    factory: T
    config_cls: type | None
    summary: str
    #: where it came from, as ``tfgen list`` shows it: BUILT_IN, or the plugin's label
    origin: str = BUILT_IN
    #: the plugin that registered it (its name, :class:`tfgen.plugins.Plugin`), None if built in
    plugin: str | None = None


class NameTaken(ValueError):
    """A second registration of a name: a bug among tfgen's own entries, a clash when a plugin
    registers it (:mod:`tfgen.plugins` tells it as one line naming both origins)."""

    def __init__(self, kind: str, name: str, first: Entry, plugin: str | None, origin: str):
        self.kind, self.name, self.first, self.plugin, self.origin = kind, name, first, plugin, origin
        super().__init__(f"{kind} {name!r} registered twice ({first.origin}, then {origin})")


#: (plugin name, origin) of the plugin being imported, which its registrations carry
_registering: tuple[str | None, str] = (None, BUILT_IN)


@contextlib.contextmanager
def registering_for(plugin: str, origin: str) -> Iterator[None]:
    """The entries registered inside come from ``plugin`` (shown as ``origin``)."""
    global _registering
    before, _registering = _registering, (plugin, origin)
    try:
        yield
    finally:
        _registering = before


class Registry(Generic[T]):
    """A named collection of components of one kind."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: type | None = None) -> Callable[[T], T]:
        """Decorator: ``@LIKELIHOODS.register("beta", config=BetaConfig)``."""

        def decorator(factory: T) -> T:
            plugin, origin = _registering
            if name in self._entries:
                raise NameTaken(self.kind, name, self._entries[name], plugin, origin)
            doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, factory, config, doc[0] if doc else "", origin,
                                        plugin)
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> Entry[T]:
        return self._entries[name]

    def factory_for(self, component: Any) -> T:
        """The factory that builds ``component`` (a :class:`tfgen.schema.Component` of this
        registry).  An entry with variants that differ in what they can do (``em``: PPCA or a
        Gaussian mixture) picks one from the component's params with its
        ``variant_class(params)``."""
        factory = self.get(component.name).factory
        variant_class = getattr(factory, "variant_class", None)
        return variant_class(component.params) if variant_class is not None else factory

    def suggestion(self, name: str) -> str | None:
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.5)
        return close[0] if close else None

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def forget(self, plugin: str) -> None:
        """Drop the entries ``plugin`` registered (a plugin whose import failed leaves none)."""
        self._entries = {n: e for n, e in self._entries.items() if e.plugin != plugin}


LIKELIHOODS: Registry[Any] = Registry("likelihood")
NETWORKS: Registry[Any] = Registry("network")
PRIORS: Registry[Any] = Registry("prior")
SCHEMES: Registry[Any] = Registry("inference scheme")
EVALUATIONS: Registry[Any] = Registry("evaluation task")

ALL = {
    "likelihoods": LIKELIHOODS,
    "networks": NETWORKS,
    "priors": PRIORS,
    "schemes": SCHEMES,
    "evaluations": EVALUATIONS,
}
