"""The Helm chart, checked without helm: Chart.yaml, values.yaml against values.schema.json, every `.Values` path
and `include` the templates use, the gateway config the ConfigMap carries (through `tollbooth check`), and the
pod's ports, probes, mounts and security settings read from the templates with their actions neutralised."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from argon2 import PasswordHasher

from gateway import __version__
from gateway.reload import _RESTART_ONLY

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "tollbooth"
TEMPLATES = CHART / "templates"
COMPONENTS = ("proxy", "issuer")
VOLUME = "/var/lib/tollbooth"
CONFIG_DIR = "/etc/tollbooth"

ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")
COMMENT = re.compile(r"{{-?\s*/\*.*?\*/\s*-?}}", re.S)
VALUES_PATH = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def template_texts() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(TEMPLATES.iterdir()) if path.is_file()}


def skeleton(text: str) -> str:
    """The template with its actions neutralised, so the YAML around them can be parsed and inspected: comments
    go, a line that is only actions (control flow, `include ... | nindent`) goes, and an action inside a line
    becomes `<<expression>>`. Both branches of an `if` stay; a `range` body stays once."""
    lines = []
    for line in COMMENT.sub("", text).splitlines():
        if ACTION.search(line) and not ACTION.sub("", line).strip():
            continue
        lines.append(ACTION.sub(lambda m: f"<<{m.group(1)}>>", line))
    return "\n".join(lines)


def define_body(text: str, name: str) -> str:
    """The text between `define "name"` and its own `end`, counting the blocks opened inside it."""
    start = re.search(r'{{-?\s*define\s+"' + re.escape(name) + r'"\s*-?}}', text)
    assert start, f"no define {name!r}"
    depth = 1
    for action in ACTION.finditer(text, start.end()):
        word = action.group(1).split(" ", 1)[0]
        depth += word in ("if", "range", "with", "define", "block")
        depth -= word == "end"
        if depth == 0:
            return text[start.end() : action.start()]
    raise AssertionError(f"define {name!r} has no end")


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(skeleton((TEMPLATES / name).read_text())) if doc]


@pytest.fixture(scope="module")
def container() -> dict[str, Any]:
    """The container a Deployment runs per component (its skeleton; `<<$component>>` stands for the name)."""
    parsed = yaml.safe_load(skeleton(define_body((TEMPLATES / "_helpers.tpl").read_text(), "tollbooth.container")))
    assert isinstance(parsed, list) and len(parsed) == 1
    return parsed[0]


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def merged(base: Any, override: Any) -> Any:
    """Helm's way of combining a values file with the chart's defaults: maps merge key by key, the rest replaces."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: merged(base.get(key), value) for key, value in override.items()}}
    return copy.deepcopy(override)


# What the Secrets of docs/deploying.md hold, as far as `tollbooth check` looks: an agent's hash must be argon2id.
SECRET_STAND_INS = {"BILLING_BOT_SECRET_HASH": PasswordHasher().hash("stand-in")}


def container_env(values: dict[str, Any], component: str) -> dict[str, str]:
    """The environment the chart gives a container, with stand-ins for what comes from Secrets."""
    env = {
        "TOLLBOOTH_ADMIN_PORT": str(values["adminPorts"][component]),
        "TOLLBOOTH_PROXY_SERVICE": "tollbooth-proxy",
        "TOLLBOOTH_NAMESPACE": "default",
    }
    if values["redis"]["existingSecret"] or values["redis"]["url"]:
        env["REDIS_URL"] = values["redis"]["url"] or "redis://redis.example:6379/0"
    for entry in values.get("secretEnv", []):
        env[entry["name"]] = SECRET_STAND_INS.get(entry["name"], f"from-secret-{entry['secretName']}")
    env.update({name: str(value) for name, value in values.get("env", {}).items()})
    return env


def schema_errors(schema: dict[str, Any], values: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(values)
    ]


# --- Chart.yaml, values.yaml and the schema -------------------------------------------------------------------


def test_chart_is_a_v2_application_of_this_version():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["type"] == "application"
    assert chart["name"] == CHART.name == "tollbooth"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == __version__, "the image tag defaults to appVersion: keep it the package version"


def test_schema_is_draft_07_and_refuses_unknown_keys(schema: dict[str, Any]):
    jsonschema.Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    closed = [key for key, sub in schema["properties"].items() if sub.get("type") == "object" and "properties" in sub]
    open_ = [key for key in closed if schema["properties"][key].get("additionalProperties") is not False]
    assert open_ == []
    config = schema["properties"]["config"]["allOf"][0]
    assert config["additionalProperties"] is False, "the gateway's own schema closes config"


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


def test_default_values_match_the_schema(schema: dict[str, Any], values: dict[str, Any]):
    assert schema_errors(schema, values) == []


MULTI_POD = {"redis": {"existingSecret": "tollbooth-redis"}, "keys": {"existingSecret": "tollbooth-keys"}}


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"replicaCount": 2}, "redis"),
        ({"replicaCount": 2, "redis": {"url": "redis://r:6379/0"}}, "keys.existingSecret"),
        ({"autoscaling": {"enabled": True}}, "redis"),
        ({"layout": "split", "keys": {"existingSecret": "k"}}, "redis"),
        ({"layout": "sidecars"}, "layout"),
        ({"replicas": 2}, ""),
        ({"config": {"proxy": {"listen": "127.0.0.1:8080"}}}, "config.proxy.listen"),
        ({"config": {"admin": {"listen": "0.0.0.0:9090"}}}, "config.admin.listen"),
        ({"config": {"audit": {"file": "/tmp/audit.jsonl"}}}, "config.audit.file"),
        ({"config": {"routes_file": "rules.yaml"}}, "config.routes_file"),
        ({"config": {"routes": []}}, "config"),
        ({"redis": {"url": "redis-host:6379"}}, "redis.url"),
        ({"secretEnv": [{"name": "CRM-KEY", "secretName": "s", "key": "k"}]}, "secretEnv.0.name"),
        ({"config": {"bogus": 1}}, "config"),
        ({"config": {"proxy": {"bogus": 1}}}, "config.proxy"),
        ({"config": {"proxy": {"listen": "0.0.0.0:70000"}}}, "config.proxy.listen"),
        ({"config": {"issuer": {"max_delegation_depth": 99}}}, "config.issuer.max_delegation_depth"),
        ({"routes": [{"name": "r", "scopes": ["crm.read"]}]}, "routes.0"),
        ({"routes": [{"name": "r", "path": "/v1", "scopes": "crm.read"}]}, "routes.0.scopes"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_schema_refuses(schema: dict[str, Any], values: dict[str, Any], override: dict[str, Any], where: str):
    errors = schema_errors(schema, merged(values, override))
    assert any(error.startswith(f"{where}:") for error in errors), errors


@pytest.mark.parametrize(
    "override",
    [
        {"replicaCount": 3, **MULTI_POD},
        {"autoscaling": {"enabled": True}, **MULTI_POD},
        {"layout": "split", "keys": {"existingSecret": "k"}, "redis": {"url": "redis+sentinel://s:26379/mymaster"}},
    ],
    ids=["replicas", "autoscaling", "split"],
)
def test_schema_accepts_several_pods_sharing_redis_and_keys(
    schema: dict[str, Any], values: dict[str, Any], override: dict[str, Any]
):
    assert schema_errors(schema, merged(values, override)) == []


# --- Templates: references, names, manifests -------------------------------------------------------------------


def test_every_values_path_a_template_uses_exists_in_values_yaml(values: dict[str, Any]):
    missing = []
    for name, text in template_texts().items():
        for path in VALUES_PATH.findall(text):
            node: Any = values
            for key in path.strip(".").split("."):
                if not (isinstance(node, dict) and key in node):
                    missing.append(f"{name}: .Values{path}")
                    break
                node = node[key]
    assert missing == []


def test_values_looked_up_by_component_have_every_component(values: dict[str, Any]):
    indexed = {
        path
        for text in template_texts().values()
        for path in re.findall(r"index \$root\.Values\.(\w+) \$component", text)
    }
    assert indexed == {"adminPorts", "resources"}
    for key in indexed:
        assert set(values[key]) == set(COMPONENTS), key
    assert all(isinstance(values["config"][component]["listen"], str) for component in COMPONENTS)


def test_every_include_is_defined_and_every_define_used():
    texts = "\n".join(template_texts().values())
    defined = re.findall(r'define\s+"([^"]+)"', texts)
    used = set(re.findall(r'(?:include|template)\s+"([^"]+)"', texts))
    assert len(defined) == len(set(defined)), "a name defined twice"
    assert used - set(defined) == set(), "included but never defined"
    assert set(defined) - used == set(), "defined but never used"


STABLE_APIS = {
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def test_every_manifest_parses_and_uses_a_stable_api():
    kinds = set()
    for name in template_texts():
        if name.endswith(".yaml"):
            for doc in documents(name):
                kinds.add((doc["apiVersion"], doc["kind"]))
                assert "labels" in doc["metadata"], f"{name}: {doc['kind']} without the chart's labels"
    assert kinds == STABLE_APIS


# --- The gateway config in the ConfigMap ------------------------------------------------------------------------


def test_configmap_carries_the_config_and_routes_values_as_they_are():
    (configmap,) = documents("configmap.yaml")
    assert set(configmap["data"]) == {"tollbooth.yaml", "routes.yaml"}
    # What this module's tests feed to `tollbooth check` is what the chart writes: the values, dumped as YAML.
    text = (TEMPLATES / "configmap.yaml").read_text()
    assert re.search(r"tollbooth\.yaml: \|\n\s*{{- toYaml \.Values\.config \| nindent 4 }}\n", text)
    assert re.search(r'routes\.yaml: \|\n\s*{{- toYaml \(dict "routes" \.Values\.routes\) \| nindent 4 }}\n', text)


@pytest.mark.parametrize("component", COMPONENTS)
def test_default_config_passes_tollbooth_check_in_each_container(
    values: dict[str, Any], check_config: Callable[..., Any], component: str
):
    result = check_config(values["config"], values["routes"], container_env(values, component))
    assert result.returncode == 0, result.stderr


def test_config_missing_its_container_environment_fails_check(values: dict[str, Any], check_config):
    result = check_config(values["config"], values["routes"], {})
    assert result.returncode == 1 and "TOLLBOOTH_ADMIN_PORT" in result.stderr


def docs_values() -> dict[str, Any]:
    text = (ROOT / "docs" / "deploying.md").read_text()
    block = re.search(r"<!-- chart values: tests/helm/test_chart\.py.*?-->\s*```yaml\n(.*?)```", text, re.S)
    assert block, "docs/deploying.md: the example values block lost its marker"
    return yaml.safe_load(block.group(1))


def test_documented_values_match_the_schema_and_their_config_passes_check(
    schema: dict[str, Any], values: dict[str, Any], check_config: Callable[..., Any]
):
    combined = merged(values, docs_values())
    assert schema_errors(schema, combined) == []
    for component in COMPONENTS:
        result = check_config(combined["config"], combined["routes"], container_env(combined, component))
        assert result.returncode == 0, result.stderr


def test_writable_paths_are_in_the_data_volume(values: dict[str, Any], writable_paths, dockerfile):
    assert dockerfile.last("VOLUME", "runtime").json_args() == [VOLUME]
    paths = writable_paths(values["config"])
    assert all(path.startswith(VOLUME + "/") for path in paths.values()), paths


def test_pods_restart_only_for_settings_a_reload_cannot_apply():
    # A checksum of the whole ConfigMap would restart every pod on a routes edit, which must hot-reload instead.
    sums = [line for text in template_texts().values() for line in text.splitlines() if "sha256sum" in line]
    assert len(sums) == 1 and "configmap" not in sums[0].lower()
    picked = set(re.search(r"pick \$\.Values\.config((?: \"\w+\")+)", sums[0]).group(1).replace('"', "").split())
    assert picked - {"version"} == {key.partition(".")[0] for key in _RESTART_ONLY}
    assert "routes" not in picked and "routes_file" not in picked


# --- The pod: ports, probes, mounts, security -------------------------------------------------------------------


def listen_port(listen: str) -> int:
    helper = define_body((TEMPLATES / "_helpers.tpl").read_text(), "tollbooth.listenPort")
    assert 'regexFind "[0-9]+$"' in helper  # the chart reads ports with this; so does this test
    found = re.search(r"[0-9]+$", listen)
    assert found, listen
    return int(found.group())


def test_ports_in_one_pod_are_distinct(values: dict[str, Any]):
    # The sidecar layout's two containers share the pod's network namespace.
    ports = [listen_port(values["config"][c]["listen"]) for c in COMPONENTS] + list(values["adminPorts"].values())
    assert len(set(ports)) == len(ports) == 4


def test_each_container_serves_its_listener_and_its_own_admin_listener(container: dict[str, Any]):
    assert container["args"] == [
        "serve",
        "--config",
        f"{CONFIG_DIR}/tollbooth.yaml",
        "--only",
        "<<$component>>",
        "--only",
        "admin",
        "--workers",
        "<<$root.Values.workers | quote>>",
    ]
    assert container["ports"] == [
        {
            "name": "<<$component>>",
            "containerPort": '<<include "tollbooth.listenPort" (index $config $component).listen>>',
        },
        {"name": "admin-<<$component>>", "containerPort": "<<index $root.Values.adminPorts $component>>"},
    ]
    admin_env = next(e for e in container["env"] if e["name"] == "TOLLBOOTH_ADMIN_PORT")
    assert admin_env["value"] == "<<index $root.Values.adminPorts $component | quote>>", "the port it listens on"


def test_default_allowed_hosts_are_the_proxy_services_names_in_the_pods_namespace(
    values: dict[str, Any], container: dict[str, Any]
):
    # In-cluster callers send the Service's name as Host; the DNS-rebinding check must know it (gateway/hosts.py).
    env = {e["name"]: e for e in container["env"]}
    assert (
        env["TOLLBOOTH_PROXY_SERVICE"]["value"]
        == '<<include "tollbooth.partName" (dict "root" $root "part" "proxy") | quote>>'
    )
    assert env["TOLLBOOTH_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert 'include "tollbooth.partName" (dict "root" $ "part" $component)' in (TEMPLATES / "services.yaml").read_text()
    service = "${TOLLBOOTH_PROXY_SERVICE}"
    namespaced = service + ".${TOLLBOOTH_NAMESPACE}"
    assert values["config"]["proxy"]["allowed_hosts"] == [
        service,
        namespaced,
        namespaced + ".svc",
        namespaced + ".svc.cluster.local",
    ]


def test_liveness_is_healthz_and_readiness_is_readyz_on_the_containers_admin_port(container: dict[str, Any]):
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin-<<$component>>"}
    # Tolerating degradation: a Redis outage must not take every replica out of service (tests/test_admin.py).
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz?degraded=ok", "port": "admin-<<$component>>"}


def test_config_is_mounted_as_a_directory_and_keys_read_only_at_keys_dir(container: dict[str, Any]):
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["config"] == {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}
    assert mounts["data"]["mountPath"] == VOLUME and not mounts["data"].get("readOnly")
    assert mounts["tmp"]["mountPath"] == "/tmp"
    assert mounts["keys"] == {"name": "keys", "mountPath": "<<$config.issuer.keys_dir>>", "readOnly": True}
    # subPath mounts are copies made at start: they never receive ConfigMap updates.
    assert not any(re.search(r"^\s*subPath:", text, re.M) for text in template_texts().values())


def test_deployment_volumes_come_from_the_configmap_the_data_value_and_the_keys_secret():
    (deployment,) = documents("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    assert set(volumes) == {"config", "data", "tmp", "keys"}
    assert volumes["config"]["configMap"] == {"name": '<<include "tollbooth.fullname" $>>'}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "<<$.Values.data.existingClaim>>"}
    assert volumes["data"]["emptyDir"] == {"sizeLimit": "<<$.Values.data.sizeLimit>>"}
    assert volumes["keys"]["secret"] == {"secretName": "<<$.Values.keys.existingSecret>>", "defaultMode": 0o440}
    assert pod["automountServiceAccountToken"] is False


def test_security_context_is_non_root_read_only_and_unprivileged(values: dict[str, Any], dockerfile):
    pod, container = values["podSecurityContext"], values["securityContext"]
    uid, gid = (int(n) for n in dockerfile.last("USER", "runtime").args.split(":"))
    assert pod == {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    helpers, deployment = (TEMPLATES / "_helpers.tpl").read_text(), (TEMPLATES / "deployment.yaml").read_text()
    assert "toYaml $root.Values.securityContext" in helpers and "toYaml $.Values.podSecurityContext" in deployment


def test_services_and_service_monitor_target_ports_the_containers_name():
    container_ports = {f"{prefix}{c}" for c in COMPONENTS for prefix in ("", "admin-")}
    services = documents("services.yaml")
    targets = {port["targetPort"] for service in services for port in service["spec"]["ports"]}
    assert targets == {"<<$component>>", "admin-proxy", "admin-issuer"}
    assert targets - {"<<$component>>"} <= container_ports
    metrics = next(s for s in services if s["metadata"]["name"].endswith('"part" "metrics")>>'))
    (monitor,) = documents("servicemonitor.yaml")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {p["name"] for p in metrics["spec"]["ports"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
