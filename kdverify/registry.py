"""Registries by name — models, datasets, objectives, recipes, metrics — with one small API and entry points.

Built-ins register through the same `register` as users. An installed package extends kdverify
with no flags by declaring entry points in the groups `kdverify.models`, `kdverify.datasets`,
`kdverify.objectives`, `kdverify.recipes` and `kdverify.metrics` (name = key, value = the object, or a module whose
import registers things); they are loaded the first time a registry is asked for something it
does not hold. A missing key is a one-line error that names what exists and how to add it.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Callable, Iterator, TypeVar

from kdverify.errors import KdverifyError, first_line

T = TypeVar("T")


class UnknownName(KdverifyError, KeyError):
    """A name no registry entry answers to (one line: what exists, how to add it)."""

    def __str__(self) -> str:
        return str(self.args[0])


_EVERY: "weakref.WeakSet[Registry[Any]]" = weakref.WeakSet()


class Registry(Mapping[str, T]):
    """name -> object, read-only as a mapping (`in`, iteration, `[name]`, `get`, `items`); the only ways in are
    `register` (which validates the name and refuses a silent replacement) and `restore` of a snapshot."""

    def __init__(self, kind: str, group: str, how_to_add: str,
                 adopt: Callable[["Registry[T]", str, Any], None] | None = None) -> None:
        self.kind, self.group, self.how_to_add = kind, group, how_to_add
        self._entries: dict[str, T] = {}
        self._adopt = adopt  # how an entry point's object is registered (default: under the entry point's name)
        self._entry_points_loaded = False
        _EVERY.add(self)

    @staticmethod
    def instances() -> list["Registry[Any]"]:
        """Every registry alive (tests snapshot them all and restore them after each test)."""
        return list(_EVERY)

    def register(self, name: str, obj: T, replace: bool = False) -> T:
        """Add `obj` under `name`; a different object under a taken name needs `replace=True`."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without surrounding spaces, got {name!r}")
        old = self._entries.get(name)
        if old is not None and old is not obj and old != obj and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered ({describe(old)}); "
                             "pass replace=True to replace it")
        self._entries[name] = obj
        return obj

    def snapshot(self) -> tuple[dict[str, T], bool]:
        """What the registry holds now, for `restore` (a test registers, then puts everything back)."""
        return dict(self._entries), self._entry_points_loaded

    def restore(self, snapshot: tuple[dict[str, T], bool]) -> None:
        entries, loaded = snapshot
        self._entries, self._entry_points_loaded = dict(entries), loaded

    def lookup(self, name: str) -> T:
        """The object registered as `name`, loading entry points first if it is not there yet."""
        if name not in self._entries:
            self.load_entry_points()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.kind} {name!r} (known: {', '.join(self) or 'none'}); "
                              f"{self.how_to_add}")
        return self._entries[name]

    __getitem__ = lookup

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self.load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self.load_entry_points()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self.load_entry_points()
        return len(self._entries)

    __eq__ = object.__eq__  # a registry is an identity, not its contents (and so it is hashable)
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries) or 'empty'})"

    def load_entry_points(self) -> None:
        """Register what installed packages declare in this registry's entry-point group (once)."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plugin: one line naming it
                raise KdverifyError(f"entry point {ep.name} = {ep.value} ({self.group}) cannot be loaded: "
                                    f"{type(exc).__name__}: {first_line(exc)}") from None
            if isinstance(obj, types.ModuleType):
                continue  # importing it registered what it provides
            if self._adopt is not None:
                self._adopt(self, ep.name, obj)
            elif ep.name not in self._entries:
                self.register(ep.name, obj)


def describe(obj: Any) -> str:
    """A short name for what is registered: module.qualname of a function or class, else its `name`, else its
    type (a recipe pair is a dict: never its whole repr on one error line)."""
    if hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    if isinstance(obj, dict) and obj:
        obj = next(iter(obj.values()))
    named = getattr(obj, "name", None)
    where = getattr(type(obj), "__module__", "?")
    return f"{where}.{type(obj).__qualname__} {named!r}" if named is not None else f"a {type(obj).__qualname__}"
