"""Reading a config file: YAML with unique keys, `extends:` inheritance, `--set` overrides, then validation by the
models of `harness.config`, every problem reported as one line naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from harness.config import ExperimentConfig
from harness.errors import UserError, did_you_mean


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error rather than a silent last-one-wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class reports it
                break
            if duplicate:
                raise _DuplicateKey(f"key '{key}' appears twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def _set_path(data: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    keys = dotted.split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        if isinstance(node, list):
            node = node[_index(key, node, dotted, origin)]
        else:
            if not isinstance(node, dict):
                raise UserError(f"{origin}: --set {dotted}: '{'.'.join(keys[:i])}' is not a mapping")
            node = node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[_index(last, node, dotted, origin)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"{origin}: --set {dotted}: parent is not a mapping")


def _index(key: str, node: list, dotted: str, origin: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise UserError(f"{origin}: --set {dotted}: '{key}' is not an index below {len(node)}")
    return int(key)


def apply_overrides(raw: dict[str, Any], overrides: list[str], origin: str) -> dict[str, Any]:
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set '{item}': expected key.path=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            value = text
        _set_path(raw, key.strip(), value, origin)
    return raw


def format_validation_error(exc: ValidationError, origin: str, model: type[BaseModel]) -> str:
    """One line: file, field path, what was wrong, and the closest valid name for unknown keys."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    where = ".".join(loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        allowed = _fields_at(model, err["loc"][:-1])
        return f"{origin}: unknown field '{where}'{did_you_mean(loc[-1], allowed)}"
    if err["type"] == "missing":
        return f"{origin}: missing required field '{where}'"
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{origin}: {where}: {msg}{shown}{more}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(str(part))
        if field is None:
            return []
        current = _inner_model(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _inner_model(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


EXTENDS = "extends"


def read_yaml(path: Path, origin: str) -> dict[str, Any]:
    """One YAML file as a mapping, every problem reported as one line naming the file."""
    if not path.exists():
        raise UserError(f"{origin}: config file not found")
    if path.is_dir():
        raise UserError(f"{origin}: is a directory, expected a YAML config file")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except _DuplicateKey as exc:
        raise UserError(f"{origin}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{origin}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise UserError(f"{origin}: not a UTF-8 text file") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserError(f"{origin}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`: mappings merge key by key, anything else (lists included) is replaced whole."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config with its `extends:` chain merged in: the named file (relative to this one's folder) first, then
    this file on top. Validation happens once, on the result, so unknown keys are still refused."""
    origin = str(path)
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise UserError(f"{origin}: {EXTENDS}: configs extend each other in a cycle ({chain})")
    raw = read_yaml(path, origin)
    parent = raw.pop(EXTENDS, None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent:
        raise UserError(f"{origin}: {EXTENDS}: expected the path of another config file, got {parent!r}")
    base_path = path.parent / parent
    if not base_path.is_file():
        raise UserError(f"{origin}: {EXTENDS}: '{parent}' not found (looked for {base_path})")
    return merge(resolve_extends(base_path, (*seen, path.resolve())), raw)


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    path = Path(path)
    origin = str(path)
    raw = resolve_extends(path)
    raw = apply_overrides(raw, overrides or [], origin)
    return validate(ExperimentConfig, raw, origin)


def validate(model: type[BaseModel], raw: Any, origin: str) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, origin, model)) from None
