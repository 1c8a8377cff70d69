"""Which JSON Schema library checks an MCP rule's `arguments` (DESIGN.md, "MCP-aware routes") on the hot path.

Each candidate compiles the schema once, as the gateway does when a config loads, then validates the arguments of
a typical tools/call (a passing and a failing one). Prints the median of 7 runs per candidate, in microseconds per
validation, and each one's ratio to the fastest. Run: `.venv/bin/python benchmarks/jsonschema_bench.py` (needs
`pip install -e '.[dev,bench]'`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import fastjsonschema
import jsonschema
import jsonschema_rs

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "region": {"enum": ["eu", "us"]},
        "customer_id": {"type": "string", "pattern": "^[a-z0-9-]{1,64}$"},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100},
        "fields": {"type": "array", "items": {"type": "string"}, "maxItems": 20},
    },
    "required": ["region", "customer_id"],
    "additionalProperties": False,
}
GOOD = {"region": "eu", "customer_id": "c-1842", "limit": 25, "fields": ["name", "email", "plan"]}
BAD = {"region": "apac", "customer_id": "c-1842", "limit": 500}
ROUNDS, REPEAT = 20_000, 7


def _jsonschema() -> Callable[[Any], bool]:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return validator.is_valid


def _fastjsonschema() -> Callable[[Any], bool]:
    validate = fastjsonschema.compile(SCHEMA)

    def is_valid(instance: Any) -> bool:
        try:
            validate(instance)
        except fastjsonschema.JsonSchemaValueException:
            return False
        return True

    return is_valid


def _jsonschema_rs() -> Callable[[Any], bool]:
    return jsonschema_rs.validator_for(SCHEMA).is_valid


CANDIDATES = {"jsonschema": _jsonschema, "fastjsonschema": _fastjsonschema, "jsonschema-rs": _jsonschema_rs}


def measure(is_valid: Callable[[Any], bool]) -> float:
    """Median microseconds per validation over REPEAT runs of ROUNDS good + ROUNDS bad instances."""
    assert is_valid(GOOD) and not is_valid(BAD)
    runs = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        for _ in range(ROUNDS):
            is_valid(GOOD)
            is_valid(BAD)
        runs.append((time.perf_counter() - start) / (2 * ROUNDS) * 1e6)
    return statistics.median(runs)


def main() -> None:
    results = {}
    for name, make in CANDIDATES.items():
        print(f"measuring {name} ({REPEAT} x {2 * ROUNDS} validations)", flush=True)
        results[name] = measure(make())
    fastest = min(results.values())
    for name, micros in sorted(results.items(), key=lambda item: item[1]):
        print(f"{name:16} {micros:8.2f} us/validation   x{micros / fastest:.1f} the fastest")


if __name__ == "__main__":
    main()
