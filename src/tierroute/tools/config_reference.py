"""The configuration reference, generated from the configuration's own classes: every key, its
type, its default and the comment written above it in src/tierroute/core/config/. So the
reference cannot drift from the code: `make config-reference` writes docs/config-reference.md,
and a test fails when the file differs from what this module renders.

    python -m tierroute.tools.config_reference > docs/config-reference.md
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import types
import typing
from collections.abc import Iterator
from enum import Enum
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tierroute.core.config import Config

HEADER = """# Configuration reference

Every key of the configuration file, generated from the comments on the configuration's fields
(`src/tierroute/core/config/`) by `make config-reference`; a test fails when this file and the
code differ, so edit the comment in the code, not this page. How the file is read (environment
overrides, relative paths, renamed keys) and the settings most deployments change:
[configuration.md](configuration.md). `tiers[]` is one entry of the list of tiers.
"""


@cache
def _comments(cls: type) -> dict[str, str]:
    """Each field declared in `cls`'s own body: the comment block right above it. A field with
    none that directly follows another shares that one's (`api_key_env` / `api_key_file`)."""
    lines, _ = inspect.getsourcelines(cls)
    body = ast.parse(textwrap.dedent("".join(lines))).body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, str] = {}
    previous: tuple[int, str] | None = None  # (last line, name) of the field before
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            previous = None
            continue
        block: list[str] = []
        i = node.lineno - 2  # the line above the field, 0-based
        while i >= 0 and lines[i].strip().startswith("#"):
            block.insert(0, lines[i].strip().removeprefix("#").strip())
            i -= 1
        text = " ".join(block)
        if not text and previous is not None and previous[0] == node.lineno - 1:
            text = f"See `{previous[1]}` above."
        out[node.target.id] = text
        if block:
            previous = (node.end_lineno or node.lineno, node.target.id)
        elif previous is not None:
            previous = (node.end_lineno or node.lineno, previous[1])
    return out


def _comment(model: type[BaseModel], name: str) -> str:
    for cls in model.__mro__:
        if (
            isinstance(cls, type)
            and issubclass(cls, BaseModel)
            and name in vars(cls).get("__annotations__", {})
        ):
            return _comments(cls).get(name, "")
    return ""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        if issubclass(annotation, Path):
            return "path"
        return annotation.__name__
    return str(annotation)


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"' if value else '""'
    if isinstance(value, Path):
        return str(value)
    return repr(value).replace("'", '"')


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The section a field holds, and whether it is a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list and args:
        inner = args[0]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, True
    return None, False


def _sections(
    model: type[BaseModel], prefix: str
) -> Iterator[tuple[str, type[BaseModel], list[str]]]:
    """(section name, its model, its rows), depth first."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        section, many = _model_of(field.annotation)
        if section is not None:
            nested.append((f"{prefix}{name}{'[]' if many else ''}", section))
            if prefix:  # a section inside a section also gets a row where it sits
                rows.append(_row(name, "section", "(section)", _comment(model, name)))
            continue
        rows.append(
            _row(name, _type_name(field.annotation), _default(field), _comment(model, name))
        )
    if prefix:
        yield prefix.removesuffix("."), model, rows
    for name, section in nested:
        yield from _sections(section, f"{name}.")


def _row(name: str, kind: str, default: str, what: str) -> str:
    cells = [f"`{name}`", kind, f"`{default}`", what]
    return "| " + " | ".join(c.replace("|", "\\|") if c is what else c for c in cells) + " |"


def render() -> str:
    """The whole reference, as docs/config-reference.md holds it."""
    parts = [HEADER]
    for name, model, rows in _sections(Config, ""):
        doc = inspect.cleandoc(vars(model).get("__doc__") or "")  # its own, not BaseModel's
        parts.append(f"## `{name}`\n")
        if doc:
            parts.append(doc + "\n")
        parts.append("| key | type | default | what |\n|---|---|---|---|")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
