"""Config problems for people: a pydantic error becomes a sentence naming the file, the rule and the field."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import (
    BaseModel,
    ValidationError,
)


class ConfigError(Exception):
    """A config that cannot be used; `problems` are complete sentences naming file, rule and field."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


Loc = tuple[str | int, ...]


# Sections keyed by rule: an error inside one names the rule (`routes[1] (get-customer)`, `upstreams.crm`).
_RULE_SECTIONS = {"routes": "name", "trusted_issuers": "issuer", "upstreams": None, "agents": None}


def _render(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _rule_and_field(loc: Loc, data: Any) -> tuple[str, Loc]:
    """('routes', 1, 'methods', 0) → ('routes[1] (typo-route)', ('methods', 0)): the rule, then the field in it."""
    if not loc:
        return "top level", ()
    if loc[0] in _RULE_SECTIONS and len(loc) >= 2:
        rule = _render(loc[:2])
        name_key = _RULE_SECTIONS[str(loc[0])]
        section = data.get(loc[0]) if isinstance(data, dict) else None
        entry = None
        if isinstance(section, list) and isinstance(loc[1], int) and loc[1] < len(section):
            entry = section[loc[1]]
        if name_key and isinstance(entry, dict) and isinstance(entry.get(name_key), str):
            rule += f" ({entry[name_key]})"
        return rule, loc[2:]
    if len(loc) >= 2:
        return str(loc[0]), loc[1:]
    return "top level", loc


def where_in(loc: Loc, data: Any) -> str:
    """`routes[1] (typo-route): methods`, `proxy: listen`, `routes`: the rule, then the field."""
    rule, field = _rule_and_field(loc, data)
    if not field:
        return rule
    if rule == "top level":
        return _render(field)
    return f"{rule}: {_render(field)}"


def _fields_of(model: type[BaseModel], loc: Loc) -> list[str]:
    """The known keys at the parent of `loc`, for did-you-mean suggestions."""
    annotation: Any = model
    for part in loc[:-1]:
        annotation = _inner(annotation, part)
        if annotation is None:
            return []
    found = _model_in(annotation)
    return list(found.model_fields) if found is not None else []


def _inner(annotation: Any, part: str | int) -> Any:
    """The type one step into `annotation`: a model's field, a list's item, a dict's value (any key)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return None if field is None else field.annotation
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list and isinstance(part, int):
        return args[0]
    if origin is dict:
        return args[1]
    for arg in args:  # Optional[...] and other unions: the first branch that has this step
        found = _inner(arg, part)
        if found is not None:
            return found
    return None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, dict):
        return None  # a list of models is not a model: its keys are not suggestions at this level
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_TYPE_NAMES = {
    dict: "a mapping",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


def type_name(value: Any) -> str:
    """What a person wrote, said as YAML: 'a mapping', 'a list', 'nothing'."""
    return _TYPE_NAMES.get(type(value), "nothing" if value is None else type(value).__name__)


def _message(item: Any) -> str:
    """Pydantic's message, said for a person editing YAML: 'must be …' and what was found instead."""
    kind = item["type"]
    given = item.get("input")
    got = type_name(given)
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of keys, not {got}"
    if kind == "list_type":
        return f"must be a list (e.g. [a, b] or one `- item` per line), not {got}"
    message = str(item["msg"]).removeprefix("Value error, ")
    if message.startswith("Input should be"):
        message = "must be" + message.removeprefix("Input should be")
        if isinstance(given, str | int | float | bool) and not isinstance(given, dict | list):
            shown = repr(given) if len(repr(given)) <= 60 else repr(given)[:57] + "…"
            message += f" (got {shown})"
    return message


def describe_validation_error(error: ValidationError, data: Any, model: type[BaseModel], path: Path) -> list[str]:
    items = []
    for item in error.errors():
        # Pydantic adds the tag of a failing union branch or validator to loc: keep only real keys.
        loc: Loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and ("[" in p or "function-" in p)))
        items.append((loc, item))
    # A misspelt required key is both unknown and missing: the did-you-mean says it all, so drop the "missing".
    hints: dict[Loc, str] = {}
    for loc, item in items:
        if item["type"] == "extra_forbidden" and loc:
            close = difflib.get_close_matches(str(loc[-1]), _fields_of(model, loc), n=1)
            if close:
                hints[loc] = close[0]
    suggested = {(loc[:-1], hint) for loc, hint in hints.items()}
    problems = []
    for loc, item in items:
        if item["type"] == "missing" and loc and (loc[:-1], str(loc[-1])) in suggested:
            continue
        if item["type"] in ("extra_forbidden", "missing") and loc:
            key = loc[-1]
            where = where_in(loc[:-1], data)
            if item["type"] == "missing":
                problems.append(f'{path}: {where}: required key "{key}" is missing')
                continue
            suggestion = f' (did you mean "{hints[loc]}"?)' if loc in hints else ""
            problems.append(f'{path}: {where}: unknown key "{key}"{suggestion}')
        else:
            problems.append(f"{path}: {where_in(loc, data)}: {_message(item)}")
    return problems
