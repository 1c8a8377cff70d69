"""The Helm chart rendered by a real helm (make test fetches it): the schema and the templates refuse what would
crash-loop, `helm lint` passes every ci values file, every rendering validates strictly against each Kubernetes
version the chart admits, and the manifests say what the gateway needs (ports, probes, mounts, rollout, names)."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_chart import CHART, CI_VALUES, NAMESPACE, Chart, Rendered, helm, resolved_env

from gateway import __version__
from gateway.reload import _RESTART_ONLY

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ("proxy", "issuer")
VOLUME = "/var/lib/tollbooth"
CONFIG_DIR = "/etc/tollbooth"
SIDECAR = CHART / "ci" / "sidecar-values.yaml"
DRAIN_SECONDS = 30  # gateway/serve.py's graceful_seconds: in-flight requests after SIGTERM


def ci_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


@pytest.fixture(scope="module")
def renderings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Rendered]:
    """Each ci values file rendered once for the module."""
    chart = Chart(tmp_path_factory.mktemp("renderings"))
    return {ci_id(path): chart.render(path) for path in CI_VALUES}


def merged(base: Any, override: Any) -> Any:
    """Helm's way of combining a values file with the chart's defaults: maps merge key by key, the rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in override.items()}}
    return copy.deepcopy(override)


def schema_errors(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(values)
    ]


# --- Chart.yaml and the schema ------------------------------------------------------------------------------


def test_chart_is_a_v2_application_of_this_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"
    assert chart["name"] == CHART.name == "tollbooth"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == __version__, "the image tag defaults to appVersion: keep it the package version"


def test_schema_is_draft_07_and_closed_everywhere(schema: dict[str, Any]):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    closed = [key for key, sub in schema["properties"].items() if sub.get("type") == "object" and "properties" in sub]
    assert [key for key in closed if schema["properties"][key].get("additionalProperties") is not False] == []
    assert schema["properties"]["config"]["allOf"][0]["additionalProperties"] is False, "the gateway's own schema"


def test_schema_is_the_chart_values_plus_the_current_gateway_config_schema(schema: dict[str, Any]):
    """`make chart-schema` writes it; a config field added without rerunning it fails here."""
    gateway = subprocess.run(
        [sys.executable, "-m", "gateway", "schema"], capture_output=True, text=True, check=True, timeout=60
    )
    generated = subprocess.run(
        [sys.executable, str(ROOT / "helm" / "values_schema.py")],
        input=gateway.stdout,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(generated.stdout) == schema, "values.schema.json is stale: run `make chart-schema`"


def test_default_values_and_every_ci_file_match_the_schema(schema: dict[str, Any], values: dict[str, Any]):
    assert schema_errors(schema, values) == []
    for path in CI_VALUES:
        assert schema_errors(schema, merged(values, yaml.safe_load(path.read_text()))) == [], path.name


def test_schema_takes_an_environment_placeholder_where_the_gateway_expands_one(schema: dict[str, Any], values):
    # `${VAR}` is expanded after parsing (gateway/config/load.py), so a number may come from the environment.
    for value, fine in (("${TOKEN_TTL}", True), ("10m", True), (0, False), ("soon", False)):
        errors = schema_errors(schema, merged(values, {"config": {"issuer": {"access_token_ttl": value}}}))
        assert (errors == []) is fine, (value, errors)


MULTI_POD = {"redis": {"existingSecret": "tollbooth-redis"}, "keys": {"existingSecret": "tollbooth-keys"}}


@pytest.mark.parametrize(
    ("override", "where", "says"),
    [
        ({"config": {"bogus": 1}}, "/config", "additional properties 'bogus' not allowed"),
        ({"config": {"proxy": {"bogus": 1}}}, "/config/proxy", "additional properties 'bogus' not allowed"),
        ({"routes": [{"name": "r", "scopes": ["crm.read"]}]}, "/routes/0", "missing property 'path'"),
        ({"routes": [{"name": "r", "path": "/v1", "scopes": "crm.read"}]}, "/routes/0/scopes", "want array"),
        ({"routes": [{"name": "r", "path": "/v1", "delegation": "maybe"}]}, "/routes/0/delegation", ""),
        ({"config": {"proxy": {"listen": "0.0.0.0:70000"}}}, "/config/proxy/listen", "does not match"),
        ({"config": {"issuer": {"listen": "0.0.0.0:0"}}}, "/config/issuer/listen", "does not match"),
        ({"config": {"proxy": {"listen": "127.0.0.1:8080"}}}, "/config/proxy/listen", "does not match"),
        ({"config": {"admin": {"listen": "0.0.0.0:9090"}}}, "/config/admin/listen", ""),
        ({"config": {"audit": {"file": "/tmp/audit.jsonl"}}}, "/config/audit/file", "does not match"),
        ({"config": {"routes_file": "rules.yaml"}}, "/config/routes_file", ""),
        ({"config": {"routes": []}}, "/config", ""),
        ({"config": {"issuer": {"max_delegation_depth": 99}}}, "/config/issuer/max_delegation_depth", "maximum"),
        ({"adminPorts": {"proxy": 70000}}, "/adminPorts/proxy", "maximum"),
        ({"service": {"proxyPort": 65536}}, "/service/proxyPort", "maximum"),
        ({"resources": {"proxy": {"requests": {"memory": "lots"}}}}, "/resources/proxy/requests/memory", ""),
        ({"replicaCount": 2}, "", "redis"),
        ({"replicaCount": 2, "redis": {"url": "redis://r:6379/0"}}, "", "keys"),
        ({"autoscaling": {"enabled": True}}, "", "redis"),
        ({"layout": "split", "keys": {"existingSecret": "k"}}, "", "redis"),
        ({"layout": "sidecars"}, "/layout", ""),
        ({"replicas": 2}, "", "additional properties 'replicas' not allowed"),
        ({"redis": {"url": "redis-host:6379"}}, "/redis/url", "does not match"),
        ({"secretEnv": [{"name": "CRM-KEY", "secretName": "s", "key": "k"}]}, "/secretEnv/0/name", ""),
        ({"preStopDelaySeconds": -1}, "/preStopDelaySeconds", "minimum"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else None,
)
def test_helm_refuses_values_against_the_schema(chart: Chart, override: dict[str, Any], where: str, says: str):
    error = chart.refusal(SIDECAR, values=override)
    assert "values don't meet the specifications of the schema" in error
    assert f"at '{where}'" in error and says in error, error


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ({"image": {"repository": ""}}, "image.repository is empty: set it to the registry path"),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 3}, **MULTI_POD},
            "autoscaling.minReplicas (5) is above autoscaling.maxReplicas (3)",
        ),
        (
            {"terminationGracePeriodSeconds": 40, "preStopDelaySeconds": 10},
            "terminationGracePeriodSeconds (40) must exceed preStopDelaySeconds (10) plus the 30 seconds",
        ),
    ],
    ids=["no-image", "min-above-max", "grace-too-short"],
)
def test_templates_refuse_what_the_schema_cannot_see(chart: Chart, override: dict[str, Any], says: str):
    assert says in chart.refusal(SIDECAR, values=override)


def test_defaults_alone_name_the_image_repository_to_set(chart: Chart):
    assert "image.repository is empty" in chart.refusal()


def test_kubernetes_older_than_the_chart_admits_is_refused(chart: Chart):
    assert "requires kubeVersion: >=1.25.0-0" in chart.refusal(SIDECAR, args=("--kube-version", "1.24.9"))


# --- Lint and strict validation on every admitted Kubernetes ------------------------------------------------


@pytest.mark.parametrize("path", CI_VALUES, ids=ci_id)
def test_helm_lint_passes_each_ci_values_file(path: Path):
    done = helm("lint", "--strict", str(CHART), "-f", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_ci_values_cover_every_documented_layout():
    assert {ci_id(path) for path in CI_VALUES} == {"sidecar", "split", "replicas-redis", "autoscaling"}


def admitted_versions() -> list[str]:
    """Every Kubernetes minor version kubernetes-validate has schemas for that the chart's kubeVersion admits."""
    floor = re.fullmatch(r">=(\d+)\.(\d+)\.0-0", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"])
    assert floor, "kubeVersion: a plain lower bound, which this test reads"
    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    found = {
        tuple(map(int, m.groups())) for p in schemas.iterdir() if (m := re.fullmatch(r"v(\d+)\.(\d+)\.0-local", p.name))
    }
    versions = sorted(v for v in found if v >= (int(floor.group(1)), int(floor.group(2))))
    assert versions[0] == (1, 25) and versions[-1] >= (1, 37)
    return [f"{major}.{minor}.0" for major, minor in versions]


@pytest.mark.parametrize("version", admitted_versions())
def test_every_rendering_validates_strictly(renderings: dict[str, Rendered], version: str):
    for layout, rendered in renderings.items():
        for doc in rendered.docs:
            if doc["apiVersion"] == "monitoring.coreos.com/v1":
                continue  # the Prometheus Operator's CRD: kubernetes-validate has no schema for it
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{layout}: {doc['kind']} {doc['metadata']['name']} on {version}: {exc.message}")


def test_each_rendering_holds_the_expected_objects(renderings: dict[str, Rendered]):
    kinds = {layout: sorted(doc["kind"] for doc in rendered.docs) for layout, rendered in renderings.items()}
    common = ["ConfigMap", "ConfigMap", "Job", "Pod", "Service", "Service", "Service"]
    assert kinds["sidecar"] == sorted([*common, "Deployment", "PodDisruptionBudget"])
    assert kinds["split"] == sorted([*common, "Deployment", "Deployment", "PodDisruptionBudget", "PodDisruptionBudget"])
    assert kinds["replicas-redis"] == sorted([*common, "Deployment", "PodDisruptionBudget", "ServiceMonitor"])
    assert kinds["autoscaling"] == sorted([*common, "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"])
    assert "replicas" not in renderings["autoscaling"].of("Deployment")[0]["spec"], "the autoscaler owns the count"
    assert renderings["replicas-redis"].of("Deployment")[0]["spec"]["replicas"] == 3


# --- Names -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("release", "override"),
    [
        ("r" * 53, {}),  # helm's longest release name
        ("tb", {"fullnameOverride": "f" * 70}),
        ("tollbooth-" + "x" * 43, {"layout": "split", **MULTI_POD}),
    ],
    ids=["long-release", "long-fullname", "long-split"],
)
def test_names_never_collide_nor_pass_63_characters(chart: Chart, release: str, override: dict[str, Any]):
    rendered = chart.render(SIDECAR, values=override, release=release)
    names = [(doc["kind"], doc["metadata"]["name"]) for doc in rendered.docs]
    assert len(set(names)) == len(names), names
    for kind, name in names:
        assert len(name) <= 63 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), (kind, name)
    services = {doc["metadata"]["name"] for doc in rendered.of("Service")}
    assert len(services) == 3 and all(name.endswith(("-proxy", "-issuer", "-metrics")) for name in services)
    for doc in rendered.docs:
        assert all(len(value) <= 63 for value in doc["metadata"]["labels"].values()), doc["metadata"]["labels"]


# --- The config the pods read ---------------------------------------------------------------------------------


def test_configmap_carries_the_config_and_routes_values_as_they_are(renderings: dict[str, Rendered], values):
    ci = yaml.safe_load(SIDECAR.read_text())
    data = renderings["sidecar"].named("ConfigMap", "-tollbooth")["data"]
    assert set(data) == {"tollbooth.yaml", "routes.yaml"}
    assert yaml.safe_load(data["tollbooth.yaml"]) == merged(values["config"], ci["config"])
    assert yaml.safe_load(data["routes.yaml"]) == {"routes": ci["routes"]}


def test_documented_values_render_and_their_config_passes_check(chart: Chart, check_config, tmp_path: Path):
    text = (ROOT / "docs" / "deploying.md").read_text()
    block = re.search(r"<!-- chart values: tests/helm/test_chart\.py.*?-->\s*```yaml\n(.*?)```", text, re.S)
    assert block, "docs/deploying.md: the example values block lost its marker"
    documented = tmp_path / "documented.yaml"
    documented.write_text(block.group(1))
    rendered = chart.render(documented)
    data = rendered.named("ConfigMap", "-tollbooth")["data"]
    for name, container in rendered.containers().items():
        result = check_config(
            yaml.safe_load(data["tollbooth.yaml"]),
            yaml.safe_load(data["routes.yaml"])["routes"],
            resolved_env(container),
        )
        assert result.returncode == 0, (name, result.stderr)


def test_writable_paths_are_in_the_data_volume(values: dict[str, Any], writable_paths, dockerfile):
    assert dockerfile.last("VOLUME", "runtime").json_args() == [VOLUME]
    paths = writable_paths(values["config"])
    assert all(path.startswith(VOLUME + "/") for path in paths.values()), paths


def pod_annotations(rendered: Rendered) -> dict[str, str]:
    return rendered.of("Deployment")[0]["spec"]["template"]["metadata"]["annotations"]


def test_pods_restart_for_settings_a_reload_cannot_apply_and_only_for_those(chart: Chart):
    # A checksum of the whole ConfigMap would restart every pod on a routes edit, which must hot-reload instead.
    base = pod_annotations(chart.render(SIDECAR))
    hot = {"routes": [{"name": "other", "path": "/v2/x", "upstream": "crm", "scopes": ["crm.read"]}]}
    hot_config = {"config": {"upstreams": {"crm": {"url": "http://crm-2.crm.svc.cluster.local:9000"}}}}
    for override in (hot, hot_config):
        assert pod_annotations(chart.render(SIDECAR, values=override)) == base, override
    sections = {key.partition(".")[0] for key in _RESTART_ONLY}
    assert {"proxy", "issuer", "admin", "redis", "audit"} <= sections
    for override in ({"config": {"proxy": {"max_body_bytes": 1024}}}, {"config": {"audit": {"on_failure": "deny"}}}):
        assert pod_annotations(chart.render(SIDECAR, values=override)) != base, override


# --- The pod: ports, probes, rollout, mounts, security ---------------------------------------------------------


def test_each_container_serves_its_listener_and_its_own_admin_listener(renderings: dict[str, Rendered]):
    for layout in ("sidecar", "split"):
        containers = renderings[layout].containers()
        assert set(containers) == set(COMPONENTS)
        config = yaml.safe_load(
            SIDECAR.read_text() if layout == "sidecar" else (CHART / "ci" / "split-values.yaml").read_text()
        )
        workers = str(config.get("workers", 1))
        for name, container in containers.items():
            assert container["args"] == [
                "serve",
                "--config",
                f"{CONFIG_DIR}/tollbooth.yaml",
                "--only",
                name,
                "--only",
                "admin",
                "--workers",
                workers,
            ]
            ports = {port["name"]: port["containerPort"] for port in container["ports"]}
            assert set(ports) == {name, f"admin-{name}"}
            assert resolved_env(container)["TOLLBOOTH_ADMIN_PORT"] == str(ports[f"admin-{name}"])
        sidecar_ports = [p["containerPort"] for c in containers.values() for p in c["ports"]]
        assert len(set(sidecar_ports)) == 4, "one pod's containers share its network namespace"
    assert {p["containerPort"] for p in renderings["sidecar"].containers()["proxy"]["ports"]} == {8080, 9090}


def test_default_allowed_hosts_are_the_proxy_services_names(renderings: dict[str, Rendered], values: dict[str, Any]):
    # In-cluster callers send the Service's name as Host; the DNS-rebinding check must know it (gateway/hosts.py).
    for rendered in renderings.values():
        proxy_service = rendered.named("Service", "-proxy")["metadata"]["name"]
        for container in rendered.containers().values():
            env = resolved_env(container)
            assert (env["TOLLBOOTH_PROXY_SERVICE"], env["TOLLBOOTH_NAMESPACE"]) == (proxy_service, NAMESPACE)
    service, namespaced = "${TOLLBOOTH_PROXY_SERVICE}", "${TOLLBOOTH_PROXY_SERVICE}.${TOLLBOOTH_NAMESPACE}"
    assert values["config"]["proxy"]["allowed_hosts"] == [
        service,
        namespaced,
        f"{namespaced}.svc",
        f"{namespaced}.svc.cluster.local",
    ]


def test_liveness_is_healthz_and_readiness_is_readyz_on_the_containers_admin_port(renderings: dict[str, Rendered]):
    for name, container in renderings["sidecar"].containers().items():
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": f"admin-{name}"}
        # Tolerating degradation: a Redis outage must not take every replica out of service (tests/test_admin.py).
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz?degraded=ok", "port": f"admin-{name}"}


def test_rollout_delays_sigterm_within_the_grace_period(renderings: dict[str, Rendered], chart: Chart):
    for rendered in renderings.values():
        for deployment in rendered.of("Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            for container in pod["containers"]:
                # exec, not the native `sleep` action, which Kubernetes before 1.29 refuses.
                command = container["lifecycle"]["preStop"]["exec"]["command"]
                assert command[0] == "sleep" and int(command[1]) > 0
                assert int(command[1]) + DRAIN_SECONDS < pod["terminationGracePeriodSeconds"]
    off = chart.render(SIDECAR, values={"preStopDelaySeconds": 0}).containers()
    assert all("lifecycle" not in container for container in off.values())


def test_resources_grow_with_workers(chart: Chart, values: dict[str, Any]):
    one = chart.render(SIDECAR).containers()
    three = chart.render(SIDECAR, values={"workers": 3}).containers()
    for name in COMPONENTS:
        assert one[name]["resources"] == values["resources"][name]
    # Three workers and a supervisor: memory x4, CPU x3 (values.yaml's measured figure is per process).
    assert three["proxy"]["resources"] == {
        "requests": {"cpu": "750m", "memory": "384Mi"},
        "limits": {"memory": "1536Mi"},
    }
    assert three["issuer"]["resources"] == {
        "requests": {"cpu": "300m", "memory": "640Mi"},
        "limits": {"memory": "1536Mi"},
    }
    fractional = chart.render(
        SIDECAR, values={"workers": 2, "resources": {"proxy": {"requests": {"cpu": 0.5, "memory": "1.5Gi"}}}}
    )
    assert fractional.containers()["proxy"]["resources"]["requests"] == {"cpu": "1", "memory": "4.5Gi"}


def test_config_is_mounted_as_a_directory_and_keys_read_only_at_keys_dir(renderings: dict[str, Rendered]):
    deployment = renderings["replicas-redis"].of("Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert set(volumes) == {"config", "data", "tmp", "keys"}
    assert volumes["config"]["configMap"] == {
        "name": renderings["replicas-redis"].named("ConfigMap", "-tollbooth")["metadata"]["name"]
    }
    assert volumes["keys"]["secret"] == {"secretName": "tollbooth-keys", "defaultMode": 0o440}
    assert "emptyDir" in volumes["data"]
    for container in pod["containers"]:
        mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
        assert mounts["config"] == {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}
        assert mounts["data"] == {"name": "data", "mountPath": VOLUME}
        assert mounts["keys"] == {"name": "keys", "mountPath": f"{VOLUME}/keys", "readOnly": True}
        # subPath mounts are copies made at start: they never receive ConfigMap updates.
        assert not any("subPath" in mount for mount in container["volumeMounts"])
    assert "keys" not in {
        v["name"] for v in renderings["sidecar"].of("Deployment")[0]["spec"]["template"]["spec"]["volumes"]
    }


def test_a_claim_keeps_the_data_and_rolls_out_by_recreate(chart: Chart):
    deployment = chart.render(SIDECAR, values={"data": {"existingClaim": "tollbooth-data"}}).of("Deployment")[0]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "tollbooth-data"}}
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_every_pod_is_non_root_read_only_and_unprivileged(renderings: dict[str, Rendered], dockerfile):
    uid, gid = (int(n) for n in dockerfile.last("USER", "runtime").args.split(":"))
    for rendered in renderings.values():
        pods = [d["spec"]["template"]["spec"] for d in rendered.of("Deployment") + rendered.of("Job")]
        pods += [p["spec"] for p in rendered.of("Pod")]
        assert len(pods) >= 3
        for pod in pods:
            assert pod["automountServiceAccountToken"] is False
            assert pod["securityContext"] == {
                "runAsNonRoot": True,
                "runAsUser": uid,
                "runAsGroup": gid,
                "fsGroup": gid,
                "seccompProfile": {"type": "RuntimeDefault"},
            }
            for container in pod["containers"]:
                assert container["securityContext"] == {
                    "runAsNonRoot": True,
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                }
                assert container["image"] == f"registry.example.com/platform/tollbooth:{__version__}"


def test_services_and_service_monitor_target_ports_the_containers_name(renderings: dict[str, Rendered]):
    for layout, rendered in renderings.items():
        names = {p["name"] for c in rendered.containers().values() for p in c["ports"]}
        for service in rendered.of("Service"):
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= names, (layout, service["metadata"]["name"])
    rendered = renderings["replicas-redis"]
    (monitor,) = rendered.of("ServiceMonitor")
    metrics = rendered.named("Service", "-metrics")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["name"] for p in metrics["spec"]["ports"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


# --- The chart's README ----------------------------------------------------------------------------------------

WHOLE_BLOCKS = {"podSecurityContext", "securityContext", "requests", "limits"}


def value_paths(tree: dict[str, Any], prefix: str = "") -> list[str]:
    paths = []
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in WHOLE_BLOCKS:
            paths += value_paths(value, f"{prefix}{key}.")
        else:
            paths.append(prefix + key)
    return paths


def test_chart_readme_documents_every_value_and_nothing_else(values: dict[str, Any]):
    readme = (CHART / "README.md").read_text()
    documented = re.findall(r"^\| `([^`]+)` \|", readme, re.M)
    assert sorted(documented) == sorted(value_paths(values))
