"""The chart's hooks, run for real from their rendered manifests: the pre-install/pre-upgrade Job's `tollbooth check
--strict` on the rendered config, and `helm test`'s smoke script against the rendered config served on loopback."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helm_chart import CHART, CI_VALUES, Chart, Rendered, resolved_env
from support import free_port, wait_answering

SIDECAR = CHART / "ci" / "sidecar-values.yaml"
CONFIG_DIR = "/etc/tollbooth"
VOLUME = "/var/lib/tollbooth"
HOOK = "helm.sh/hook"


def hook_objects(rendered: Rendered) -> tuple[dict[str, Any], dict[str, Any]]:
    configmap = rendered.named("ConfigMap", "-check")
    (job,) = rendered.of("Job")
    return configmap, job


def write_config(data: dict[str, str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in data.items():
        (folder / name).write_text(text)
    return folder / "tollbooth.yaml"


def run_check_job(rendered: Rendered, tmp: Path) -> subprocess.CompletedProcess[str]:
    """The Job's container as the kubelet would run it: its ConfigMap mounted, its args, its environment."""
    configmap, job = hook_objects(rendered)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == CONFIG_DIR and mount["readOnly"] is True
    config = write_config(configmap["data"], tmp / "etc-tollbooth")
    args = [str(config) if arg == f"{CONFIG_DIR}/tollbooth.yaml" else arg for arg in container["args"]]
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={"PATH": os.environ["PATH"], **resolved_env(container)},
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_runs_before_install_and_upgrade_on_the_config_the_pods_get(chart: Chart):
    rendered = chart.render(SIDECAR)
    configmap, job = hook_objects(rendered)
    for hooked in (configmap, job):
        annotations = hooked["metadata"]["annotations"]
        assert annotations[HOOK] == "pre-install,pre-upgrade"
        # A failed Job stays for `kubectl logs`; the next attempt replaces it.
        assert annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    weights = [int(hooked["metadata"]["annotations"]["helm.sh/hook-weight"]) for hooked in (configmap, job)]
    assert weights[0] < weights[1], "the ConfigMap exists before the Job that mounts it"
    assert configmap["data"] == rendered.named("ConfigMap", "-tollbooth")["data"]
    pod = job["spec"]["template"]["spec"]
    assert (job["spec"]["backoffLimit"], pod["restartPolicy"]) == (0, "Never")
    assert pod["volumes"] == [{"name": "config", "configMap": {"name": configmap["metadata"]["name"]}}]
    (container,) = pod["containers"]
    assert container["args"] == ["check", "--strict", "--config", f"{CONFIG_DIR}/tollbooth.yaml"]
    assert container["env"] == rendered.containers()["proxy"]["env"], "the environment the config is read with"
    assert "Job" not in {d["kind"] for d in chart.render(SIDECAR, values={"configCheck": {"enabled": False}}).docs}


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name.removesuffix("-values.yaml"))
def test_check_job_passes_each_ci_values_file(chart: Chart, path: Path, tmp_path: Path):
    done = run_check_job(chart.render(path), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: ") and done.stderr == ""


GET = ["GET", "HEAD"]


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ({"routes": []}, "no routes: every request to the proxy is denied"),
        (
            {
                "routes": [
                    {"name": "one", "methods": GET, "path": "/v1/customers/{id}", "upstream": "crm", "scopes": ["a"]},
                    {"name": "two", "methods": GET, "path": "/v1/customers/{key}", "upstream": "crm", "scopes": ["b"]},
                ]
            },
            'route "two" (routes[1]) duplicates route "one" (routes[0])',
        ),
        (
            {"routes": [{"name": "lost", "path": "/v1/x", "upstream": "billing", "scopes": ["a"]}]},
            "billing",
        ),
        ({"secretEnv": []}, "environment variable CRM_API_KEY is not set"),
    ],
    ids=["no-routes", "duplicate-route", "unknown-upstream", "unset-variable"],
)
def test_check_job_fails_the_release_for_what_the_schema_cannot_see(
    chart: Chart, tmp_path: Path, override: dict[str, Any], says: str
):
    rendered = chart.render(SIDECAR, values=override)
    done = run_check_job(rendered, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert says in done.stderr, done.stderr


# --- helm test -------------------------------------------------------------------------------------------------


def smoke_command(rendered: Rendered) -> tuple[list[str], dict[str, str]]:
    (pod,) = rendered.of("Pod")
    assert pod["metadata"]["annotations"][HOOK] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["command"][:2] == ["python", "-c"]
    assert container["command"][2] == (CHART / "files" / "smoke.py").read_text()
    return [sys.executable, *container["command"][1:]], resolved_env(container)


def test_smoke_test_asks_the_release_services(chart: Chart):
    rendered = chart.render(SIDECAR)
    _, env = smoke_command(rendered)
    proxy = rendered.named("Service", "-proxy")
    metrics = rendered.named("Service", "-metrics")
    assert env["PROXY_URL"] == f"http://{proxy['metadata']['name']}:{proxy['spec']['ports'][0]['port']}"
    assert env["READYZ_URLS"].split() == [
        f"http://{metrics['metadata']['name']}:{port['port']}/readyz?degraded=ok" for port in metrics["spec"]["ports"]
    ]
    config = yaml.safe_load(rendered.named("ConfigMap", "-tollbooth")["data"]["tollbooth.yaml"])
    assert (env["RESOURCE"], env["ISSUER"]) == (config["proxy"]["public_url"], config["issuer"]["url"])


@pytest.fixture
def served_sidecar(chart: Chart, tmp_path: Path):
    """The sidecar pod's two containers as processes: the rendered config and args, on loopback ports, with the
    data volume in tmp_path and `localhost` as the proxy Service's name. Yields (rendered, proxy, admin ports)."""
    rendered = chart.render(SIDECAR)
    data = dict(rendered.named("ConfigMap", "-tollbooth")["data"])
    ports = {"proxy": free_port(), "issuer": free_port()}
    admin = {"proxy": free_port(), "issuer": free_port()}
    config = yaml.safe_load(data["tollbooth.yaml"].replace(VOLUME, str(tmp_path / "volume")))
    for name in ports:
        config[name]["listen"] = f"127.0.0.1:{ports[name]}"
    config["admin"]["listen"] = config["admin"]["listen"].replace("0.0.0.0:", "127.0.0.1:")
    data["tollbooth.yaml"] = yaml.safe_dump(config)
    config_path = write_config(data, tmp_path / "etc-tollbooth")
    (tmp_path / "volume").mkdir()
    processes = []
    for name, container in rendered.containers().items():
        env = {**resolved_env(container), "TOLLBOOTH_ADMIN_PORT": str(admin[name])}
        env["TOLLBOOTH_PROXY_SERVICE"] = "localhost"
        args = [str(config_path) if a == f"{CONFIG_DIR}/tollbooth.yaml" else a for a in container["args"]]
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "gateway", *args],
                env={"PATH": os.environ["PATH"], **env},
                cwd=tmp_path / "volume",
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / f"{name}.log", "wb"),  # noqa: SIM115
            )
        )
    try:
        for name in admin:
            wait_answering(f"http://127.0.0.1:{admin[name]}/healthz", f"the {name} container")
        yield rendered, ports["proxy"], admin
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            assert process.wait(timeout=30) == 0


def run_smoke(rendered: Rendered, **env: str) -> subprocess.CompletedProcess[str]:
    command, rendered_env = smoke_command(rendered)
    return subprocess.run(command, env={**rendered_env, **env}, capture_output=True, text=True, timeout=60)


def test_smoke_test_passes_against_the_rendered_release_and_fails_on_what_is_wrong(served_sidecar):
    rendered, proxy_port, admin = served_sidecar
    readyz = " ".join(f"http://127.0.0.1:{port}/readyz?degraded=ok" for port in admin.values())
    proxy_url = f"http://localhost:{proxy_port}"
    passed = run_smoke(rendered, PROXY_URL=proxy_url, READYZ_URLS=readyz)
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout == "ok: metadata and readiness\n"

    wrong = run_smoke(rendered, PROXY_URL=proxy_url, READYZ_URLS=readyz, RESOURCE="https://other.example.com")
    assert wrong.returncode == 1 and "resource is 'https://gateway.example.com'" in wrong.stderr

    dead = f"http://127.0.0.1:{free_port()}/readyz"
    down = run_smoke(rendered, PROXY_URL=proxy_url, READYZ_URLS=f"{readyz} {dead}")
    assert down.returncode == 1 and f"FAIL {dead}:" in down.stderr

    with unready_server() as unready_url:
        unready = run_smoke(rendered, PROXY_URL=proxy_url, READYZ_URLS=f"{readyz} {unready_url}")
    assert unready.returncode == 1, unready.stdout
    assert f"FAIL {unready_url}: 503 not ready: audit sink down" in unready.stderr, unready.stderr


@contextlib.contextmanager
def unready_server() -> Iterator[str]:
    """An admin listener that answers /readyz as an unready gateway does: 503 with the reason."""

    class Unready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            body = b"not ready: audit sink down"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/readyz"
    finally:
        server.shutdown()
        server.server_close()
