"""Typed plugin registries with lazy discovery.

Built-in plugins live one per module in the `defenses` and `attacks` packages and register with a decorator
(`@register_defense("mlac")`). To keep `sdm --help` and `sdm plugins` fast, nothing heavy is imported to *list* them:
the package folders are scanned and each module's source is parsed for its decorator and class docstring. A plugin is
imported only when it is used. Third-party plugins come from the entry-point groups `sdm.defenses` / `sdm.attacks`,
and a config may name an explicit `module:attr` (which runs that module's code, like any plugin).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import logging
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from harness.errors import UserError, did_you_mean

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "module:attr"
    description: str
    origin: str  # "built-in" or the distribution that provides the entry point


class Registry(Generic[T]):
    """Name -> plugin class, discovered lazily from a built-in package and an entry-point group."""

    def __init__(self, kind: str, package: str, decorator: str, group: str, base: Callable[[], type]):
        self.kind = kind
        self._package = package
        self._decorator = decorator
        self._group = group
        self._base = base  # returns the base class; a callable so the base module is imported lazily too
        self._registered: dict[str, type[T]] = {}
        self._entries: dict[str, Entry] | None = None

    # -- registration -------------------------------------------------------------------------------------------
    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorate(cls: type[T]) -> type[T]:
            existing = self._registered.get(name)
            if existing is not None and existing is not cls and _qualname(existing) != _qualname(cls):
                raise UserError(f"{self.kind} '{name}' is registered twice: {_qualname(existing)} and {_qualname(cls)}")
            self._registered[name] = cls
            cls.name = name  # type: ignore[attr-defined]
            return cls

        return decorate

    # -- discovery ----------------------------------------------------------------------------------------------
    def entries(self) -> dict[str, Entry]:
        if self._entries is None:
            self._entries = {}
            for entry in [*self._scan_builtins(), *self._scan_entry_points()]:
                other = self._entries.get(entry.name)
                if other is not None and other.target != entry.target:
                    raise UserError(
                        f"{self.kind} '{entry.name}' is provided twice: {other.target} ({other.origin}) "
                        f"and {entry.target} ({entry.origin})"
                    )
                self._entries[entry.name] = entry
        return self._entries

    def names(self) -> list[str]:
        return sorted(self.entries())

    def _scan_builtins(self) -> list[Entry]:
        spec = importlib.util.find_spec(self._package)
        if spec is None or not spec.submodule_search_locations:
            return []
        found = []
        for info in pkgutil.iter_modules(spec.submodule_search_locations):
            if info.name.startswith("_"):
                continue
            module = f"{self._package}.{info.name}"
            found.extend(_decorated_classes(module, self._decorator, "built-in", self.kind))
        return found

    def _scan_entry_points(self) -> list[Entry]:
        found = []
        for ep in entry_points(group=self._group):
            module, _, attr = ep.value.partition(":")
            dist = ep.dist.name if ep.dist is not None else "entry point"
            found.append(Entry(ep.name, ep.value, _class_docstring(module, attr), dist))
        return found

    # -- lookup -------------------------------------------------------------------------------------------------
    def get(self, name: str) -> type[T]:
        """The plugin class for a registered name or an explicit 'module:attr'."""
        if ":" in name:
            return self._load(name, name)
        entry = self.entries().get(name)
        if entry is None:
            raise UserError(f"unknown {self.kind} '{name}'{did_you_mean(name, self.names())}")
        return self._load(entry.target, name)

    def _load(self, target: str, name: str) -> type[T]:
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
            cls = getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"{self.kind} '{name}': cannot load {target}: {exc}") from None
        base = self._base()
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise UserError(f"{self.kind} '{name}': {target} is not a subclass of {base.__name__}")
        if ":" in name or name not in self._registered:
            # Entry points and explicit targets need no decorator; the name they were asked for is their name.
            cls.name = name if ":" not in name else getattr(cls, "name", attr)  # type: ignore[attr-defined]
        return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _module_ast(module: str) -> ast.Module | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as fh:
        return ast.parse(fh.read(), filename=spec.origin)


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if (doc or "").strip() else "(no description)"


def _decorated_classes(module: str, decorator: str, origin: str, kind: str) -> list[Entry]:
    tree = _module_ast(module)
    if tree is None:
        return []
    found = []
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        for deco in node.decorator_list:
            if (
                isinstance(deco, ast.Call)
                and isinstance(deco.func, ast.Name)
                and deco.func.id == decorator
                and deco.args
                and isinstance(deco.args[0], ast.Constant)
                and isinstance(deco.args[0].value, str)
            ):
                name = deco.args[0].value
                if any(e.name == name for e in found):
                    raise UserError(f"{kind} '{name}' is registered twice in {module}")
                found.append(Entry(name, f"{module}:{node.name}", _first_line(ast.get_docstring(node)), origin))
    return found


def _class_docstring(module: str, attr: str) -> str:
    tree = _module_ast(module)
    if tree is not None:
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == attr:
                return _first_line(ast.get_docstring(node))
    return "(no description)"


def _defense_base() -> type:
    from harness.plugins import Defense

    return Defense


def _attack_base() -> type:
    from harness.plugins import Attack

    return Attack


DEFENSES: Registry = Registry("defense", "defenses", "register_defense", "sdm.defenses", _defense_base)
ATTACKS: Registry = Registry("attack", "attacks", "register_attack", "sdm.attacks", _attack_base)

register_defense = DEFENSES.register
register_attack = ATTACKS.register
