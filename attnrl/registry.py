"""One small registry type behind every extension point: credit strategies, tasks, rewards and recipes.

    STRATEGIES = Registry("credit strategy")

    @STRATEGIES.register("mine", needs=("attention",))     # a decorator ...
    def mine(x, p): ...

    REWARDS.register("length", length_reward)               # ... or a call
    RECIPES.register("grpo", "attnrl.recipes.grpo")         # a string: an import path, imported on first get()

    STRATEGIES.get("mine")                 # the object; an unknown name: RegistryError naming the closest one
    STRATEGIES.get("my_pkg.credit:mine")   # an import path (``module:attr`` or, as TRL, ``module.attr``)
    STRATEGIES.choices()                   # registered names, in registration order (help texts, argparse)

A name holds one object: registering a different object under a taken name raises RegistryError (the same
definition again, e.g. after a module reload, is allowed). Names given by import path are not registered; they are
imported when asked for (the module must be importable: installed, or its folder on ``PYTHONPATH``), so a user's
function needs no registration and no import side effect to be found. Keyword metadata given to ``register``
(e.g. a strategy's ``needs``) is read back with :meth:`Registry.info`.

A registry also reads like the dict it replaces (``name in R``, ``R[name]``, iteration over the names, ``len``,
``items()``, ``setdefault``), so ``STRATEGIES`` and ``TASKS`` keep working where code used them as dicts.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["Registry", "RegistryError", "import_path", "is_import_path"]

_MISSING = object()


class RegistryError(ValueError, KeyError):
    """An unknown name, a name that does not import, or a second object under a taken name. A ValueError (the
    configuration's mistake) and a KeyError (what ``registry[name]`` raises for a dict, too)."""

    __str__ = ValueError.__str__  # KeyError's would quote the message

    def __init__(self, kind: str, name: str, reason: str):
        super().__init__(f"{kind} {name!r} {reason}")
        self.kind, self.name, self.reason = kind, name, reason


def is_import_path(name: str) -> bool:
    """Whether ``name`` reads as an import path (``module:attr`` or ``module.attr``) rather than a plain name."""
    return isinstance(name, str) and (":" in name or "." in name)


def import_path(path: str) -> Any:
    """The object an import path names: ``package.module:attr.sub`` (attribute after the colon), or a dotted
    ``package.module.attr`` (the longest importable module prefix, then attributes; a whole module too).

    Raises ImportError (module missing: ModuleNotFoundError) or AttributeError naming what is missing. An import
    error raised *inside* the named module is not hidden: it propagates as it is.
    """
    module_name, colon, attrs = path.partition(":")
    if colon:
        module = importlib.import_module(module_name)
        return _getattrs(module, attrs, path)
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        try:
            module = importlib.import_module(prefix)
        except ModuleNotFoundError as e:
            # only "this prefix is not a module" moves on to a shorter prefix; a module that exists but imports
            # something missing reports that
            if e.name is None or not (prefix == e.name or prefix.startswith(e.name + ".")):
                raise
            if cut == 1:
                raise
            continue
        return _getattrs(module, ".".join(parts[cut:]), path)
    raise ImportError(path)  # unreachable


def _getattrs(obj: Any, attrs: str, path: str) -> Any:
    for attr in filter(None, attrs.split(".")):
        if not hasattr(obj, attr):
            raise AttributeError(f"{getattr(obj, '__name__', obj)!s} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, attr)
    return obj


def _identity(obj: Any) -> Any:
    """What "the same definition" means for the duplicate guard: a function, class or module by its qualified
    name (a module reload makes new objects with the same names), a lazy import path by its target, else the
    object."""
    if isinstance(obj, str):
        module, _, attrs = obj.partition(":")
        return f"{module}.{attrs}" if attrs else module
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(obj, type(importlib)):
        return obj.__name__
    if module and qualname and "<locals>" not in qualname and "<lambda>" not in qualname:
        return f"{module}.{qualname}"
    return obj


class Registry(Generic[T]):
    """Names -> objects of one kind (see the module docstring).

    ``kind``: what the objects are, for messages ("credit strategy"). ``import_paths``: whether ``get`` accepts
    import paths for names not registered. ``check``: called as ``check(obj, name)`` on every object ``get``
    returns for the first time (registered, lazy or by path); it returns the object to use (it may convert, e.g.
    call a factory) or raises TypeError / ValueError saying what is wrong.
    """

    def __init__(self, kind: str, *, import_paths: bool = True, check: Callable[[Any, str], T] | None = None):
        self.kind = kind
        self.import_paths = import_paths
        self._check = check
        self._entries: dict[str, Any] = {}  # name -> object, or an import path string (lazy)
        self._meta: dict[str, dict[str, Any]] = {}
        self._loaded: dict[str, T] = {}  # name or import path -> checked object

    # ---------------------------------------------------------------- register

    def register(self, name: str, obj: Any = _MISSING, **meta: Any):
        """Register ``obj`` (an object, or an import path string loaded on first :meth:`get`) under ``name``;
        without ``obj``, a decorator doing so. ``meta``: keyword data kept with it (:meth:`info`). Returns ``obj``.
        RegistryError when ``name`` already holds another object."""
        if obj is _MISSING:
            return lambda target: self.register(name, target, **meta)
        if not isinstance(name, str) or not name or is_import_path(name):
            raise RegistryError(self.kind, name, "is not a valid name: use a plain name without '.' or ':' (those "
                                                 "mark import paths)")
        old = self._entries.get(name, _MISSING)
        if old is not _MISSING and old is not obj and _identity(old) != _identity(obj):
            raise RegistryError(self.kind, name, f"is already registered ({_describe(old)}); choose another name "
                                                 f"for {_describe(obj)}")
        self._entries[name] = obj
        self._meta[name] = dict(meta)
        self._loaded.pop(name, None)
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (nothing happens when it is not registered)."""
        self._entries.pop(name, None)
        self._meta.pop(name, None)
        self._loaded.pop(name, None)

    # ---------------------------------------------------------------- look up

    def get(self, name: str, default: Any = _MISSING) -> T:
        """The object registered under ``name``, or the one the import path ``name`` names.

        Unknown (or not importable): ``default`` when given, else RegistryError saying why, with the closest
        registered name and the choices."""
        if name in self._loaded:
            return self._loaded[name]
        try:
            if name in self._entries:
                obj = self._entries[name]
                if isinstance(obj, str):
                    obj = self._import(name, obj)
            elif self.import_paths and is_import_path(name):
                obj = self._import(name, name)
            else:
                raise RegistryError(self.kind, name, f"is unknown{self.closest(name)}; {self.choices_text()}")
            if self._check is not None:
                try:
                    obj = self._check(obj, name)
                except (TypeError, ValueError) as e:
                    if isinstance(e, RegistryError):
                        raise
                    raise RegistryError(self.kind, name, f"is not usable: {e}") from e
        except RegistryError:
            if default is not _MISSING:
                return default
            raise
        self._loaded[name] = obj
        return obj

    def _import(self, name: str, path: str) -> Any:
        try:
            return import_path(path)
        except (ImportError, AttributeError) as e:
            hint = " (is its folder on PYTHONPATH?)" if isinstance(e, ModuleNotFoundError) else ""
            raise RegistryError(self.kind, name, f"could not be imported from {path!r}: {e}{hint}") from e

    def info(self, name: str) -> dict[str, Any]:
        """The metadata registered with ``name``; for an import path, that of the registered name holding the same
        object (a user module that registers its function and is named by path), else {}."""
        if name in self._meta:
            return dict(self._meta[name])
        obj = self.get(name)
        for registered, entry in self._entries.items():
            if entry is obj or self._loaded.get(registered) is obj:
                return dict(self._meta[registered])
        return {}

    def choices(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def choices_text(self) -> str:
        """'choose one of a, b, c' (plus 'or an import path' when accepted), for messages and help texts."""
        text = "choose one of " + ", ".join(repr(n) for n in self._entries)
        return text + (" or an import path 'module:function'" if self.import_paths else "")

    def closest(self, name: str) -> str:
        """' (did you mean X?)' for the registered name closest to ``name``, or ''."""
        match = difflib.get_close_matches(str(name), list(self._entries), n=1, cutoff=0.6)
        return f" (did you mean {match[0]!r}?)" if match else ""

    # ---------------------------------------------------------------- the dict it replaces

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered (import paths are not: use :meth:`get`)."""
        return name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, obj: Any) -> None:
        self.register(name, obj)

    def __delitem__(self, name: str) -> None:
        if name not in self._entries:
            raise RegistryError(self.kind, name, "is not registered")
        self.unregister(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def values(self) -> list[T]:
        return [self.get(name) for name in self._entries]

    def items(self) -> list[tuple[str, T]]:
        return [(name, self.get(name)) for name in self._entries]

    def setdefault(self, name: str, obj: Any) -> T:
        """The object under ``name``, registering ``obj`` there first when the name is free."""
        if name not in self._entries:
            self.register(name, obj)
        return self.get(name)

    def pop(self, name: str, default: Any = _MISSING) -> Any:
        if name not in self._entries:
            if default is _MISSING:
                raise RegistryError(self.kind, name, "is not registered")
            return default
        obj = self._loaded.get(name, self._entries[name])
        self.unregister(name)
        return obj

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


def _describe(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if module and qualname else repr(obj)
