"""The Helm chart rendered by a real helm (`make helm` puts it in .tools/): `helm template` with values files and
overrides, the manifests parsed, and a rendered container's environment resolved as the kubelet would."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from argon2 import PasswordHasher

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "tollbooth"

HELM = Path(os.environ.get("TOLLBOOTH_HELM", ROOT / ".tools" / "helm"))
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "apps"


@dataclass(frozen=True)
class Rendered:
    """`helm template`'s manifests, parsed."""

    docs: tuple[dict[str, Any], ...]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def named(self, kind: str, suffix: str) -> dict[str, Any]:
        found = [doc for doc in self.of(kind) if doc["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"{kind} *{suffix}: {[d['metadata']['name'] for d in self.of(kind)]}"
        return found[0]

    def containers(self) -> dict[str, dict[str, Any]]:
        """Every Deployment's containers by name (proxy, issuer)."""
        return {c["name"]: c for d in self.of("Deployment") for c in d["spec"]["template"]["spec"]["containers"]}


def helm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"{HELM}: no helm; `make helm` fetches it (make test does)")
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


@dataclass
class Chart:
    """`helm template` of the chart with values files and overrides; release `tb` in namespace `apps`."""

    tmp: Path

    def template(
        self, *files: Path, values: dict[str, Any] | None = None, release: str = "tb", args: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        options = [arg for path in files for arg in ("-f", str(path))]
        if values is not None:
            override = self.tmp / f"override-{len(list(self.tmp.glob('override-*')))}.yaml"
            override.write_text(yaml.safe_dump(values))
            options += ["-f", str(override)]
        return helm("template", release, str(CHART), "--namespace", NAMESPACE, *options, *args)

    def render(self, *files: Path, **kwargs: Any) -> Rendered:
        done = self.template(*files, **kwargs)
        assert done.returncode == 0, done.stderr
        return Rendered(tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc))

    def refusal(self, *files: Path, **kwargs: Any) -> str:
        """helm's error, one line: the test fails if the chart renders."""
        done = self.template(*files, **kwargs)
        assert done.returncode != 0, f"rendered: {done.stdout[:400]}"
        return " ".join(done.stderr.split())


# What the Secrets the ci values name hold, as far as `tollbooth check` looks: an agent's hash must be argon2id.
SECRET_STAND_INS = {("tollbooth-agents", "billing-bot"): PasswordHasher().hash("stand-in")}


def resolved_env(container: dict[str, Any]) -> dict[str, str]:
    """A rendered container's environment as the kubelet would give it, with stand-ins for Secrets' contents."""
    env = {}
    for entry in container.get("env", []):
        source = entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
            env[entry["name"]] = NAMESPACE
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            stand_in = "redis://redis.example:6379/0" if entry["name"] == "REDIS_URL" else f"from-{ref['name']}"
            env[entry["name"]] = SECRET_STAND_INS.get((ref["name"], ref["key"]), stand_in)
        else:
            raise AssertionError(f"an env entry this test cannot resolve: {entry}")
    return env
