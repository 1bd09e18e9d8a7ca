"""Registries by name — models, datasets, objectives, recipes — with one small API and entry points.

Built-ins register through the same `register` as users. An installed package extends kdverify
with no flags by declaring entry points in the groups `kdverify.models`, `kdverify.datasets`,
`kdverify.objectives` and `kdverify.recipes` (name = key, value = the object, or a module whose
import registers things); they are loaded the first time a registry is asked for something it
does not hold. A missing key is a one-line error that names what exists and how to add it.
"""

from __future__ import annotations

import types
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

from kdverify.errors import KdverifyError, first_line

T = TypeVar("T")


class UnknownName(KdverifyError, KeyError):
    """A name no registry entry answers to (one line: what exists, how to add it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(dict, Generic[T]):
    """name -> object. A dict (so `in`, iteration and `[name]` work) plus `register` / `lookup`."""

    def __init__(self, kind: str, group: str, how_to_add: str,
                 adopt: Callable[["Registry[T]", str, Any], None] | None = None) -> None:
        super().__init__()
        self.kind, self.group, self.how_to_add = kind, group, how_to_add
        self._adopt = adopt  # how an entry point's object is registered (default: under the entry point's name)
        self._entry_points_loaded = False

    def register(self, name: str, obj: T, replace: bool = False) -> T:
        """Add `obj` under `name`; a different object under a taken name needs `replace=True`."""
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without surrounding spaces, got {name!r}")
        old = dict.get(self, name)
        if old is not None and old is not obj and old != obj and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered ({describe(old)}); "
                             "pass replace=True to replace it")
        self[name] = obj
        return obj

    def copy(self) -> "Registry[T]":
        """A registry of the same kind holding the same entries (tests register into a copy)."""
        twin: Registry[T] = Registry(self.kind, self.group, self.how_to_add, self._adopt)
        twin.update(self)
        twin._entry_points_loaded = self._entry_points_loaded
        return twin

    def lookup(self, name: str) -> T:
        """The object registered as `name`, loading entry points first if it is not there yet."""
        if not dict.__contains__(self, name):
            self.load_entry_points()
        if not dict.__contains__(self, name):
            raise UnknownName(f"unknown {self.kind} {name!r} (known: {', '.join(self) or 'none'}); "
                              f"{self.how_to_add}")
        return self[name]

    def __contains__(self, name: object) -> bool:
        if not dict.__contains__(self, name):
            self.load_entry_points()
        return dict.__contains__(self, name)

    def names(self) -> list[str]:
        self.load_entry_points()
        return list(self)

    def __iter__(self) -> Iterator[str]:
        self.load_entry_points()
        return super().__iter__()

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
            elif not dict.__contains__(self, ep.name):
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
