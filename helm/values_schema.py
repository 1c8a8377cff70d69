"""Write the chart's values.schema.json: the chart's own values (helm/chart-values.schema.json) with the gateway's
config schema (`tollbooth schema`, read from stdin) under `config` and `routes`, so that `helm install` refuses an
unknown config key or a bad route with the schema's message instead of a pod that crash-loops.

    tollbooth schema | python helm/values_schema.py > helm/tollbooth/values.schema.json    # make chart-schema

The result is draft-07, which every helm 3 and 4 validates, with the gateway's definitions under `definitions`.
Values are checked as written, before the gateway expands `${VAR}`: wherever the gateway wants a number, a boolean
or a string of a fixed form, a string holding `${` is accepted too, since only the environment decides it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHART_VALUES = HERE / "chart-values.schema.json"
DRAFT_07 = "http://json-schema.org/draft-07/schema#"
PLACEHOLDER = {"type": "string", "pattern": r"\$\{", "description": "expanded from the environment at start"}
_FIXED_FORM = ("pattern", "enum", "const", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _with_placeholders(node: Any) -> Any:
    """The schema with every constrained scalar also accepting a `${...}` string; `$defs` refs made draft-07."""
    if isinstance(node, list):
        return [_with_placeholders(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _with_placeholders(value) for key, value in node.items()}
    if "$ref" in out:
        out["$ref"] = out["$ref"].replace("#/$defs/", "#/definitions/")
    kind = out.get("type")
    scalar = kind in ("integer", "number", "boolean") or (kind is None and ("enum" in out or "const" in out))
    if scalar or (kind == "string" and any(key in out for key in _FIXED_FORM)):
        annotations = {key: out.pop(key) for key in ("title", "default", "description") if key in out}
        return {**annotations, "anyOf": [out, PLACEHOLDER]}
    return out


def chart_schema(gateway: dict[str, Any], chart: dict[str, Any]) -> dict[str, Any]:
    """The chart's values schema with the gateway's config schema merged in."""
    gateway = dict(gateway)
    definitions = _with_placeholders(gateway.pop("$defs"))
    for key in ("$schema", "title"):
        gateway.pop(key, None)
    top = _with_placeholders(gateway)
    merged = json.loads(json.dumps(chart))
    merged["$schema"] = DRAFT_07
    properties = merged["properties"]
    # The chart's own demands on config (listen on every interface, writable paths in the volume) come on top.
    properties["config"] = {"description": properties["config"]["description"], "allOf": [top, properties["config"]]}
    properties["routes"] = {**properties["routes"], "items": top["properties"]["routes"]["items"]}
    merged["definitions"] = definitions
    return merged


def main() -> int:
    gateway = json.load(sys.stdin)
    chart = json.loads(CHART_VALUES.read_text())
    sys.stdout.write(json.dumps(chart_schema(gateway, chart), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
