"""Fixtures for the packaging tests (the image and the Helm chart): the parsed Dockerfile, the chart's values, a
Tollbooth config's writable paths, `tollbooth check` in a subprocess, and the chart rendered by a real helm."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import Chart

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tollbooth"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, COPY, USER, ...
    args: str
    stage: str  # the `AS name` of the stage it belongs to ("" before the first FROM)

    def json_args(self) -> Any:
        """The exec (JSON array) form of CMD, ENTRYPOINT, VOLUME, or the command after HEALTHCHECK's options."""
        return json.loads(self.args[self.args.index("[") :])


@dataclass(frozen=True)
class Dockerfile:
    instructions: tuple[Instruction, ...]

    @property
    def stages(self) -> list[str]:
        return [i.stage for i in self.instructions if i.keyword == "FROM"]

    def of(self, keyword: str, stage: str | None = None) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword and (stage is None or i.stage == stage)]

    def last(self, keyword: str, stage: str) -> Instruction:
        found = self.of(keyword, stage)
        assert found, f"no {keyword} in stage {stage!r}"
        return found[-1]


def parse_dockerfile(text: str) -> Dockerfile:
    """Instructions with their line continuations joined; comments (also inside a continuation) dropped."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            logical.append(pending + line.strip())
        pending = ""
    stage = ""
    instructions = []
    for entry in logical:
        keyword, _, args = entry.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.search(r"\s+AS\s+(\S+)\s*$", args, re.IGNORECASE)
            stage = match.group(1) if match else str(len([i for i in instructions if i.keyword == "FROM"]))
        instructions.append(Instruction(keyword, re.sub(r"\s+", " ", args.strip()), stage))
    return Dockerfile(tuple(instructions))


@pytest.fixture(scope="session")
def dockerfile() -> Dockerfile:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="session")
def values() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="session")
def writable_paths() -> Callable[[dict[str, Any]], dict[str, str]]:
    """A function: the config's writable paths by dotted key (`audit.file`), with the defaults filled in.

    Which keys are writable comes from the config model itself: those whose default lies under `.tollbooth/`, so
    a writable path added later is checked here without editing the tests.
    """
    from gateway.config import Config

    defaults = {
        key: value
        for key, value in _leaves(Config().model_dump())
        if isinstance(value, str) and value.startswith(".tollbooth/")
    }
    assert {"issuer.keys_dir", "audit.file"} <= set(defaults)

    def paths(config: dict[str, Any]) -> dict[str, str]:
        given = dict(_leaves(config))
        return {key: given.get(key, default) for key, default in defaults.items()}

    return paths


def _leaves(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


CheckConfig = Callable[[dict[str, Any], list[dict[str, Any]], dict[str, str]], subprocess.CompletedProcess[str]]


@pytest.fixture
def check_config(tmp_path: Path) -> CheckConfig:
    """A function: write tollbooth.yaml and routes.yaml as the container sees them, run `tollbooth check --strict`
    with exactly the given environment (plus PATH), return the finished process."""

    def check(
        config: dict[str, Any], routes: list[dict[str, Any]], env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        folder = tmp_path / "etc-tollbooth"
        folder.mkdir(exist_ok=True)
        (folder / "tollbooth.yaml").write_text(yaml.safe_dump(config))
        (folder / "routes.yaml").write_text(yaml.safe_dump({"routes": routes}))
        return subprocess.run(
            [sys.executable, "-m", "gateway", "check", "--strict", "--config", str(folder / "tollbooth.yaml")],
            env={"PATH": os.environ["PATH"], **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    return check


@pytest.fixture
def chart(tmp_path: Path) -> Chart:
    return Chart(tmp_path)
