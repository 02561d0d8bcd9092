"""The private pipecat members tollbridge relies on are still there, as we use them.

A pipecat upgrade that renames, drops or re-signs one fails here, naming the
member and why we need it, instead of somewhere in the middle of a call. And no
module outside `tollbridge.pipecat_internals` touches a pipecat private member
that is not declared there.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
import textwrap
from abc import ABC
from collections.abc import Callable
from types import ModuleType
from typing import Generic

import pytest

import tollbridge
import tollbridge.providers
import tollbridge.transports
from tollbridge.pipecat_internals import PRIVATE_MEMBERS, Kind, PrivateMember


def resolve(path: str) -> type | ModuleType | None:
    """The class or module at a dotted path, or None if this pipecat has none there."""
    try:
        return pkgutil.resolve_name(path)
    except (ImportError, AttributeError):
        return None


@functools.cache
def self_attributes(cls: type, *, stored: bool) -> frozenset[str]:
    """The `self.<name>` attributes `cls`'s own source sets (or, if not `stored`, mentions)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # a builtin such as `object`
        return frozenset()
    return frozenset(
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and (isinstance(node.ctx, ast.Store) or not stored)
    )


def params(function: Callable) -> list[str]:
    """A method's parameter names after `self`: what a caller or an override relies on."""
    names = list(inspect.signature(function).parameters)
    return names[1:] if names[:1] == ["self"] else names


PYTHONS_OWN = set(vars(ABC)) | set(vars(Generic))
"""Private names Python itself puts on classes (`_abc_impl`…): not pipecat's."""


def is_private(name: str) -> bool:
    """`_name`, not `__dunder__` nor Python's own."""
    return name.startswith("_") and not name.startswith("__") and name not in PYTHONS_OWN


def from_package(cls: type, package: str) -> bool:
    return cls.__module__ == package or cls.__module__.startswith(f"{package}.")


def problem(member: PrivateMember) -> str | None:
    """What the installed pipecat no longer offers of `member`, or None."""
    owner = resolve(member.owner)
    if owner is None:
        return f"{member.owner} does not exist any more"
    if member.kind is Kind.INSTANCE_ATTRIBUTE:
        classes = owner.__mro__ if isinstance(owner, type) else ()
        if not any(member.name in self_attributes(cls, stored=True) for cls in classes):
            return f"neither the class nor a base class sets self.{member.name}"
        return None
    if not hasattr(owner, member.name):
        return f"{member.owner} has no {member.name} any more"
    value = getattr(owner, member.name)
    if member.kind is Kind.METHOD:
        if not callable(value):
            return "it is no longer a method"
        if params(value) != list(member.params):
            return f"it now takes ({', '.join(params(value))}), not ({', '.join(member.params)})"
    return None


def check(member: PrivateMember) -> None:
    """Fail, naming the member and why we need it, if the installed pipecat lost it."""
    if found := problem(member):
        pytest.fail(
            f"pipecat moved a private member tollbridge relies on.\n"
            f"  {member.kind}: {member}\n"
            f"  what changed: {found}\n"
            f"  why we need it: {member.why}\n"
            f"Adapt tollbridge.pipecat_internals (and the override, if it is one) to this pipecat.",
            pytrace=False,
        )


@pytest.mark.parametrize("member", PRIVATE_MEMBERS, ids=str)
def test_pipecat_still_has(member: PrivateMember) -> None:
    check(member)


class Upgraded:
    """A pipecat class as a future release might leave it."""

    _constant = 1

    def __init__(self) -> None:
        self._kept = 0

    def _method(self, context_id: str) -> None: ...


HERE = f"{__name__}.Upgraded"


@pytest.mark.parametrize(
    ("member", "complaint"),
    [
        (PrivateMember(f"{__name__}.Gone", "_method", Kind.METHOD, "w"), "does not exist any more"),
        (PrivateMember(HERE, "_gone", Kind.METHOD, "w"), "has no _gone"),
        (PrivateMember(HERE, "_constant", Kind.METHOD, "w"), "is no longer a method"),
        (
            PrivateMember(HERE, "_method", Kind.METHOD, "w", params=("context_id", "frame")),
            "it now takes (context_id), not (context_id, frame)",
        ),
        (PrivateMember(HERE, "_gone", Kind.ATTRIBUTE, "w"), "has no _gone"),
        (PrivateMember(HERE, "_gone", Kind.INSTANCE_ATTRIBUTE, "w"), "nor a base class sets self._gone"),
    ],
    ids=["class", "method", "not-callable", "signature", "attribute", "instance-attribute"],
)
def test_a_moved_member_fails_naming_it_and_why(member: PrivateMember, complaint: str) -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        check(member)
    message = str(failed.value)
    assert complaint in message
    assert f"{member.kind}: {member.owner}.{member.name}" in message
    assert f"why we need it: {member.why}" in message


@pytest.mark.parametrize(
    "member",
    [
        PrivateMember(HERE, "_method", Kind.METHOD, "w", params=("context_id",)),
        PrivateMember(HERE, "_constant", Kind.ATTRIBUTE, "w"),
        PrivateMember(HERE, "_kept", Kind.INSTANCE_ATTRIBUTE, "w"),
    ],
    ids=str,
)
def test_a_member_still_there_passes(member: PrivateMember) -> None:
    check(member)


def our_pipecat_classes() -> set[type]:
    """tollbridge's classes built on pipecat's (the fakes speak wire protocols, not pipecat)."""
    found: set[type] = set()
    for package in (tollbridge, tollbridge.providers, tollbridge.transports):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if ".fakes" in info.name:
                continue
            module = importlib.import_module(info.name)
            found.update(
                value
                for value in vars(module).values()
                if inspect.isclass(value)
                and value.__module__ == module.__name__
                and any(from_package(base, "pipecat") for base in value.__mro__)
            )
    return found


def undeclared_uses(
    ours: list[type], pipecat: list[type], members: tuple[PrivateMember, ...] = PRIVATE_MEMBERS
) -> list[str]:
    """Private members of the `pipecat` classes that the `ours` classes built on them override,
    set or read other than as `members` declare."""
    declared = {(m.name, resolve(m.owner)) for m in members}
    found = []
    for mine in ours:
        for name, value in vars(mine).items():
            if not is_private(name):
                continue
            theirs = next((base for base in pipecat if hasattr(base, name)), None)
            if theirs is None:
                continue
            where = f"{mine.__qualname__}.{name} overrides {theirs.__qualname__}.{name}"
            original = getattr(theirs, name)
            if not any((name, base) in declared for base in pipecat):
                found.append(f"{where}, not declared in PRIVATE_MEMBERS")
                continue
            if callable(value) and params(value) != params(original):
                found.append(f"{where} taking ({', '.join(params(value))}), "
                             f"pipecat's takes ({', '.join(params(original))})")
            if inspect.iscoroutinefunction(value) != inspect.iscoroutinefunction(original):
                found.append(f"{where}, and only one of the two is async")
        for name in self_attributes(mine, stored=False):
            if is_private(name) and name not in vars(mine) and any(
                name in self_attributes(base, stored=True) or name in vars(base) for base in pipecat
            ):
                found.append(f"{mine.__qualname__} uses pipecat's self.{name}: "
                             "reach it through tollbridge.pipecat_internals")
    return found


def test_no_undeclared_private_pipecat_member_is_used() -> None:
    found = set()
    for cls in our_pipecat_classes():
        ours = [base for base in cls.__mro__ if from_package(base, "tollbridge")]
        pipecat = [base for base in cls.__mro__ if from_package(base, "pipecat")]
        found.update(undeclared_uses(ours, pipecat))
    if found:
        pytest.fail("\n".join(sorted(found)), pytrace=False)


class Sneaky(Upgraded):
    """Stands for one of our classes; `Upgraded` stands for pipecat's."""

    def __init__(self) -> None:
        super().__init__()
        self._kept += 1

    async def _method(self, frame: object) -> None: ...


def test_an_undeclared_use_is_caught() -> None:
    assert undeclared_uses([Sneaky], [Upgraded]) == [
        "Sneaky._method overrides Upgraded._method, not declared in PRIVATE_MEMBERS",
        "Sneaky uses pipecat's self._kept: reach it through tollbridge.pipecat_internals",
    ]


def test_a_declared_override_must_match_pipecat() -> None:
    declared = (PrivateMember(HERE, "_method", Kind.METHOD, "w", params=("context_id",)),)
    assert undeclared_uses([Sneaky], [Upgraded], declared) == [
        "Sneaky._method overrides Upgraded._method taking (frame), pipecat's takes (context_id)",
        "Sneaky._method overrides Upgraded._method, and only one of the two is async",
        "Sneaky uses pipecat's self._kept: reach it through tollbridge.pipecat_internals",
    ]
