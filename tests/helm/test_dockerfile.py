"""The container image, checked without Docker: the Dockerfile's structure, the build context .dockerignore lets
through, and config/container.yaml (the config the image is meant to run) validated and served for real."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from support import free_port, wait_until

from gateway.config import expand_env

ROOT = Path(__file__).resolve().parents[2]
VOLUME = "/var/lib/tollbooth"
CONFIG_IN_IMAGE = "/etc/tollbooth/tollbooth.yaml"
CONTAINER_CONFIG = ROOT / "config" / "container.yaml"
CONTAINER_ENV = {"UPSTREAM_URL": "http://api.internal:9000", "UPSTREAM_API_KEY": "k"}


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `*` and `?` stay within one path segment, `**` spans segments."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] in "*?":
            out, i = out + ("[^/]*" if pattern[i] == "*" else "[^/]"), i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides; `!` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip().strip("/")
        if any(_pattern(pattern).match(prefix) for prefix in prefixes):
            result = not negate
    return result


@pytest.fixture(scope="module")
def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def test_dockerignore_matching_follows_docker(dockerignore: list[str]):
    # The matcher itself, on patterns whose Docker meaning is known.
    assert ignored(".venv/bin/python", ["*"]) and not ignored("gateway/cli.py", ["*", "!gateway/"])
    assert ignored("gateway/__pycache__/cli.pyc", ["*", "!gateway", "**/__pycache__"])
    assert not ignored("docs/a.md", ["*.md"]) and ignored("a.md", ["*.md"])


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".tollbooth/keys/20250131T120000.123456Z-ES256.pem",
        ".tollbooth/demo/billing-bot.secret",
        ".git/config",
        "agent.token",
        "my-agent.secret",
        "tests/support.py",
        "config/example.yaml",
        "gateway/__pycache__/cli.cpython-311.pyc",
    ],
)
def test_build_context_leaves_out_keys_secrets_venv_and_git(dockerignore: list[str], path: str):
    assert ignored(path, dockerignore)


def test_build_context_is_only_the_package_and_its_metadata(dockerignore: list[str]):
    sent = {entry.name for entry in ROOT.iterdir() if not ignored(entry.name, dockerignore)}
    assert sent == {"pyproject.toml", "README.md", "constraints.txt", "gateway"}
    secrets = [p for p in (ROOT / "gateway").rglob("*") if p.suffix in (".pem", ".key", ".secret", ".token")]
    assert secrets == []


def test_every_copied_source_is_in_the_build_context(dockerfile, dockerignore: list[str]):
    copies = [i for i in dockerfile.of("COPY") if not i.args.startswith("--from=")]
    assert copies, "the builder copies the sources"
    for copy in copies:
        *sources, _destination = shlex.split(copy.args)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source, dockerignore), f"COPY {source}: .dockerignore leaves it out of the context"


def test_wheel_is_built_in_one_stage_and_only_the_virtualenv_reaches_the_runtime(dockerfile):
    assert dockerfile.stages == ["builder", "runtime"]
    assert all(i.args.startswith("${PYTHON_IMAGE}") for i in dockerfile.of("FROM"))
    assert [i.args for i in dockerfile.of("ARG", "")] == ["PYTHON_IMAGE=python:3.11.14-slim-bookworm"]
    assert any("pip wheel" in i.args for i in dockerfile.of("RUN", "builder"))
    assert [i.args for i in dockerfile.of("COPY", "runtime")] == ["--from=builder /opt/tollbooth /opt/tollbooth"]
    assert not any("pip" in i.args for i in dockerfile.of("RUN", "runtime"))


def test_builds_with_the_builders_own_frontend_and_a_patch_pinned_base(dockerfile):
    """A `# syntax=` directive makes BuildKit pull a frontend image first: offline and mirrored hosts fail."""
    first = (ROOT / "Dockerfile").read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first, re.IGNORECASE)
    base = dockerfile.of("ARG", "")[0].args.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-[a-z]+", base), f"{base}: pin the patch release and the Debian"


def _runtime_requirements(name: str, seen: dict[str, Requirement]) -> dict[str, Requirement]:
    """Every distribution `name` needs at run time (no extras of its own, markers for this interpreter)."""
    for text in metadata.requires(name) or []:
        requirement = Requirement(text)
        if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(requirement.name)
        if key in seen:
            continue
        seen[key] = requirement
        _runtime_requirements(requirement.name, seen)
        for extra in requirement.extras:  # uvicorn[standard]: what the extra adds
            for extra_text in metadata.requires(requirement.name) or []:
                extra_requirement = Requirement(extra_text)
                marker = extra_requirement.marker
                if marker and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
                    seen.setdefault(canonicalize_name(extra_requirement.name), extra_requirement)
                    _runtime_requirements(extra_requirement.name, seen)
    return seen


def test_constraints_pin_every_runtime_dependency_within_pyproject():
    lines = [line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = dict(line.split("==", 1) for line in lines if line and not line.startswith("#"))
    pinned = {canonicalize_name(name): version for name, version in pins.items()}
    needed = _runtime_requirements("tollbooth", {})
    assert {"uvicorn", "httpx2", "pyjwt", "uvloop"} <= set(needed)
    missing = sorted(set(needed) - set(pinned))
    assert not missing, f"constraints.txt pins no version of {missing}: run `make constraints`"
    for key, requirement in needed.items():
        assert requirement.specifier.contains(pinned[key], prereleases=True), (
            f"constraints.txt pins {key}=={pinned[key]}, outside {requirement}: run `make constraints`"
        )


def test_runs_as_a_numeric_non_root_user(dockerfile):
    user = dockerfile.last("USER", "runtime").args
    assert re.fullmatch(r"\d+:\d+", user), f"USER {user}: numeric, so runAsNonRoot can check it"
    uid, gid = (int(n) for n in user.split(":"))
    assert uid != 0 and gid != 0
    created = " ".join(i.args for i in dockerfile.of("RUN", "runtime"))
    assert f"--uid {uid}" in created and f"--gid {gid}" in created
    assert f"-o {uid} -g {gid}" in created and VOLUME in created, "the volume directory belongs to that user"


def test_writable_directory_is_one_volume_and_the_working_directory(dockerfile):
    assert dockerfile.last("VOLUME", "runtime").json_args() == [VOLUME]
    assert dockerfile.last("WORKDIR", "runtime").args == VOLUME  # relative paths in a config land there too


def test_entrypoint_is_tollbooth_serving_the_mounted_config(dockerfile):
    assert dockerfile.last("ENTRYPOINT", "runtime").json_args() == ["tollbooth"]
    assert dockerfile.last("CMD", "runtime").json_args() == ["serve", "--config", CONFIG_IN_IMAGE]
    env = dockerfile.last("ENV", "runtime").args
    assert f"TOLLBOOTH_CONFIG={CONFIG_IN_IMAGE}" in env  # `docker run IMAGE check` reads the same file


def healthcheck_command(dockerfile) -> list[str]:
    command = dockerfile.last("HEALTHCHECK", "runtime").json_args()
    assert command[0] == "/opt/tollbooth/bin/python", "slim images have no curl: the virtualenv's Python asks"
    return [sys.executable, *command[1:]]


def test_healthcheck_asks_the_admin_listener_for_healthz(dockerfile):
    command = healthcheck_command(dockerfile)
    assert "/healthz" in command[-1] and "TOLLBOOTH_ADMIN_PORT" in command[-1]
    assert "TOLLBOOTH_ADMIN_PORT=9090" in dockerfile.last("ENV", "runtime").args
    admin = yaml.safe_load(CONTAINER_CONFIG.read_text())["admin"]["listen"]
    assert admin == "0.0.0.0:${TOLLBOOTH_ADMIN_PORT:-9090}", "the config's admin port is the one the check asks"


def listen_ports(config: dict[str, Any]) -> set[int]:
    expanded = expand_env(config, (), {}, [])
    return {int(expanded[section]["listen"].rpartition(":")[2]) for section in ("proxy", "issuer", "admin")}


def test_exposes_the_container_configs_listeners(dockerfile):
    config = yaml.safe_load(CONTAINER_CONFIG.read_text())
    assert all(config[section]["listen"].startswith("0.0.0.0:") for section in ("proxy", "issuer", "admin"))
    exposed = {int(port) for port in dockerfile.last("EXPOSE", "runtime").args.split()}
    assert exposed == listen_ports(config)


def test_container_config_passes_check(check_config):
    routes = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text())["routes"]
    result = check_config(yaml.safe_load(CONTAINER_CONFIG.read_text()), routes, CONTAINER_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok:")


def test_container_config_without_its_upstream_fails_check(check_config):
    result = check_config(yaml.safe_load(CONTAINER_CONFIG.read_text()), [], {"UPSTREAM_API_KEY": "k"})
    assert result.returncode == 1 and "UPSTREAM_URL" in result.stderr


def test_container_config_writes_only_under_the_volume(writable_paths: Callable[[dict[str, Any]], dict[str, str]]):
    paths = writable_paths(yaml.safe_load(CONTAINER_CONFIG.read_text()))
    assert paths and all(path.startswith(VOLUME + "/") for path in paths.values()), paths


def test_container_config_serves_and_the_image_healthcheck_passes(
    dockerfile, writable_paths: Callable[[dict[str, Any]], dict[str, str]], tmp_path: Path
):
    # The container's config as it is, but on loopback ports of this machine and with the volume in tmp_path.
    text = CONTAINER_CONFIG.read_text().replace(VOLUME, str(tmp_path / "volume")).replace("0.0.0.0:", "127.0.0.1:")
    config = yaml.safe_load(text)
    config["proxy"]["listen"] = f"127.0.0.1:{free_port()}"
    config["issuer"]["listen"] = f"127.0.0.1:{free_port()}"
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "tollbooth.yaml").write_text(yaml.safe_dump(config))
    (etc / "routes.yaml").write_text((ROOT / "config" / "routes.yaml").read_text())
    (tmp_path / "volume").mkdir()
    env = {"PATH": os.environ["PATH"], **CONTAINER_ENV, "TOLLBOOTH_ADMIN_PORT": str(free_port())}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(etc / "tollbooth.yaml")],
        cwd=tmp_path / "volume",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "gateway.log", "wb"),  # noqa: SIM115
    )

    def healthy() -> bool:
        assert process.poll() is None, (tmp_path / "gateway.log").read_text()
        return subprocess.run(healthcheck_command(dockerfile), env=env, capture_output=True, timeout=10).returncode == 0

    try:
        wait_until(healthy, timeout=20, what="the image's HEALTHCHECK to pass")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    stopped = subprocess.run(healthcheck_command(dockerfile), env=env, capture_output=True, timeout=10)
    assert stopped.returncode != 0, "with the gateway down the check must fail"
    # It wrote only into the volume (its generated key among it); the config directory, a read-only mount, and
    # everything else are as they were.
    assert list(Path(writable_paths(config)["issuer.keys_dir"]).glob("*-ES256.pem"))
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != etc and "volume" not in p.parts]
    assert [p.name for p in outside] == ["gateway.log"]
    assert sorted(p.name for p in etc.iterdir()) == ["routes.yaml", "tollbooth.yaml"]
