"""Capabilities: what a registered component can do, declared by the interfaces its class
inherits, and asked for at config load time.

A component class (a scheme, a likelihood) inherits the :class:`Capability` interfaces it
implements; nothing defaults to yes.  Whatever needs one of them (an evaluation task, a
sampler, a prior) names it with :func:`require`, which runs when the config is loaded: a
config asking for what its component cannot do is refused before anything is built, in one
line naming both sides and the registered components that would do.  The capabilities of
schemes are :mod:`tfgen.inference.capabilities`, those of likelihoods
:mod:`tfgen.models.likelihood_capabilities`; this module is the mechanism they share.

The ground floor: it imports nothing of tfgen's above it.
"""
from __future__ import annotations

from typing import Any

from tfgen.errors import ConfigError
from tfgen.registry import Registry


class Capability:
    """Base of the capability interfaces; ``description`` is what error messages call it."""

    description = "a capability"


class AnyOf(type):
    """Metaclass of a capability that a component has when it has any one of ``members``."""

    members: tuple = ()

    def __subclasscheck__(cls, subclass) -> bool:
        return any(issubclass(subclass, member) for member in cls.members)

    def __instancecheck__(cls, instance) -> bool:
        return cls.__subclasscheck__(type(instance))


def registered_with(registry: Registry, capability: type[Capability]) -> list[str]:
    """Names of the registered components that implement ``capability`` (for error messages;
    an entry with variants names the variants that do, e.g. "em (model = 'gmm')")."""
    names = []
    for e in registry.entries():
        variants = getattr(e.factory, "variants", None)
        if variants:
            names += [f"{e.name} ({key} = {value!r})" for key, value, cls in variants()
                      if issubclass(cls, capability)]
        elif isinstance(e.factory, type) and issubclass(e.factory, capability):
            names.append(e.name)
    return names


def has(registry: Registry, component: Any, capability: type[Capability]) -> bool:
    """Whether the class that builds ``component`` (a :class:`tfgen.schema.Component` of
    ``registry``) implements ``capability``."""
    factory = registry.factory_for(component)
    return isinstance(factory, type) and issubclass(factory, capability)


def require(registry: Registry, component: Any, capability: type[Capability], *,
            file: str | None, key: str, needed_by: str, called: str, chosen_by: str,
            given: Any = ..., alternative: str = "") -> None:
    """Refuse, at load time, a config whose ``needed_by`` needs what ``component`` lacks:
    "<needed_by> needs <capability>, which <called> '<name>' does not have"; allowed: the
    alternative, or ``chosen_by`` = the registered components that have it."""
    if has(registry, component, capability):
        return
    others = registered_with(registry, capability)
    allowed = (f"{chosen_by} = {' or '.join(repr(n) for n in others)}" if others
               else f"no registered {called} has it")
    if alternative:
        allowed = f"{alternative}, or {allowed}"
    raise ConfigError(file, key, f"{needed_by} needs {capability.description}, which "
                      f"{called} {component.name!r} does not have",
                      component.name if given is ... else given, allowed)
