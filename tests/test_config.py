"""load_config: defaults, ${VAR} expansion, durations, rate limits, the routes file, and errors that name the file,
the rule and the field. Cases that share a shape are tables."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import (
    HTTP_METHODS,
    ConfigError,
    LoadedConfig,
    RateLimit,
    config_schema,
    load_config,
    parse_duration,
    parse_rate_limit,
)

ROOT = Path(__file__).resolve().parent.parent

ONE_UPSTREAM = """
upstreams:
  crm:
    url: http://127.0.0.1:9000
"""


def write(directory: Path, text: str, name: str = "tollbooth.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(directory: Path, text: str, *, routes: str | None = None, env: dict[str, str] | None = None) -> LoadedConfig:
    if routes is not None:
        write(directory, routes, "routes.yaml")
    return load_config(write(directory, text), env=env or {})


def problems_of(
    directory: Path, text: str, *, routes: str | None = None, env: dict[str, str] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(directory, text, routes=routes, env=env)
    assert caught.value.problems, "a ConfigError always says what is wrong"
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(directory: Path, text: str, **kwargs: Any) -> str:
    problems = problems_of(directory, text, **kwargs)
    assert len(problems) == 1, problems
    return problems[0]


def route_yaml(**fields: Any) -> str:
    """A config with one upstream and one route named "r" with these fields (name and path defaulted)."""
    route = {"name": "r", "path": "/r", **fields}
    return ONE_UPSTREAM + yaml.safe_dump({"routes": [route]})


# ---------------------------------------------------------------- defaults


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "").config
    assert config.version == 1
    assert config.proxy.listen == "127.0.0.1:8080"
    assert config.proxy.public_url == "http://127.0.0.1:8080"
    assert config.proxy.max_body_bytes == 10 * 1024 * 1024
    assert config.proxy.max_token_bytes == 8192
    assert config.proxy.clock_leeway == 30
    assert config.proxy.trust_forwarded_for is False
    assert config.issuer.listen == "127.0.0.1:8081"
    assert config.issuer.url == "http://127.0.0.1:8081"
    assert config.issuer.keys_dir == ".tollbooth/keys"
    assert config.issuer.algorithm == "ES256"
    assert config.issuer.access_token_ttl == 300
    assert config.admin.listen == "127.0.0.1:9090"
    assert config.redis.url == ""
    assert config.audit.stream == "tollbooth:audit"
    assert config.audit.max_len == 1_000_000
    assert config.audit.file == ".tollbooth/audit.jsonl"
    assert config.audit.spool_dir == ".tollbooth/spool"
    assert config.audit.on_failure == "spool"
    assert config.audit.queue_size == 100_000
    assert config.upstreams == {}
    assert config.agents == {}
    assert config.trusted_issuers == []
    assert config.routes_file is None
    assert config.routes == []


def test_route_upstream_and_agent_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, route_yaml() + "agents:\n  bot: {}\n").config
    route = config.routes[0]
    assert (route.upstream, route.methods, route.scopes) == (None, None, [])
    assert (route.delegation, route.rate_limit, route.public) == ("allowed", None, False)
    assert config.upstream_for(route) == "crm"
    upstream = config.upstreams["crm"]
    assert (upstream.timeout, upstream.connect_timeout, upstream.max_connections, upstream.headers) == (30, 5, 256, {})
    agent = config.agents["bot"]
    assert (agent.secret_hash, agent.jwks, agent.jwks_file, agent.max_token_ttl) == (None, None, None, None)
    assert (agent.scopes, agent.may_act_for, agent.refresh_tokens) == ([], [], False)


def test_a_section_left_empty_means_its_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "proxy:\nagents:\n  # billing-bot: {}\nroutes:\n").config
    assert config.proxy.listen == "127.0.0.1:8080"
    assert config.agents == {}
    assert config.routes == []


def test_the_example_config_loads_with_its_routes_file() -> None:
    loaded = load_config(ROOT / "config" / "example.yaml", env={})
    assert [r.name for r in loaded.config.routes][:2] == ["list-customers", "get-customer"]
    assert loaded.sources == (ROOT / "config" / "example.yaml", (ROOT / "config" / "routes.yaml").resolve())
    assert loaded.config.upstreams["crm"].headers["Authorization"] == "Bearer demo-upstream-key"


# ---------------------------------------------------------------- ${VAR} expansion

EXPANSION_CASES = [
    # (yaml, env, path into the loaded config, expected value)
    ("redis:\n  url: ${REDIS}\n", {"REDIS": "redis://r:6379/0"}, ("redis", "url"), "redis://r:6379/0"),
    (
        ONE_UPSTREAM + "    headers:\n      Authorization: Bearer ${KEY}\n",
        {"KEY": "k1"},
        ("upstreams", "crm", "headers", "Authorization"),
        "Bearer k1",
    ),
    (
        "agents:\n  bot:\n    scopes: [crm.read, '${EXTRA}']\n",
        {"EXTRA": "crm.write"},
        ("agents", "bot", "scopes"),
        ["crm.read", "crm.write"],
    ),
    ("redis:\n  url: ${REDIS:-redis://fallback}\n", {}, ("redis", "url"), "redis://fallback"),
    ("redis:\n  url: ${REDIS:-redis://fallback}\n", {"REDIS": ""}, ("redis", "url"), "redis://fallback"),
    ("redis:\n  url: ${REDIS:-redis://fallback}\n", {"REDIS": "redis://set"}, ("redis", "url"), "redis://set"),
    ("redis:\n  url: ${REDIS:-}\n", {}, ("redis", "url"), ""),
    ("audit:\n  stream: ${APP}:${ENV}:audit\n", {"APP": "tb", "ENV": "prod"}, ("audit", "stream"), "tb:prod:audit"),
    ("proxy:\n  max_body_bytes: ${MAX}\n", {"MAX": "1024"}, ("proxy", "max_body_bytes"), 1024),
    ("proxy:\n  clock_leeway: ${LEEWAY:-1m}\n", {}, ("proxy", "clock_leeway"), 60.0),
    ("audit:\n  max_len: 5\n", {}, ("audit", "max_len"), 5),
    ("audit:\n  stream: $HOME/{x}\n", {"HOME": "/root"}, ("audit", "stream"), "$HOME/{x}"),
]


@pytest.mark.parametrize(("text", "env", "where", "expected"), EXPANSION_CASES)
def test_env_vars_expand_anywhere_in_the_file(
    tmp_path: Path, text: str, env: dict[str, str], where: tuple[str, ...], expected: Any
) -> None:
    node: Any = load(tmp_path, text, env=env).config
    for part in where:
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    assert node == expected


def test_env_vars_expand_in_a_route(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        route_yaml(path="/${PREFIX}/customers", scopes=["${SCOPE}"]),
        env={
            "PREFIX": "v2",
            "SCOPE": "crm.read",
        },
    ).config
    assert (config.routes[0].path, config.routes[0].scopes) == ("/v2/customers", ["crm.read"])


def test_env_vars_expand_in_the_routes_file(tmp_path: Path) -> None:
    routes = "routes:\n  - name: r\n    path: /${PREFIX:-v1}/x\n    scopes: ['${SCOPE}']\n"
    config = load(tmp_path, ONE_UPSTREAM + "routes_file: routes.yaml\n", routes=routes, env={"SCOPE": "a.b"}).config
    assert (config.routes[0].path, config.routes[0].scopes) == ("/v1/x", ["a.b"])


@pytest.mark.parametrize(
    "value",
    [
        "evil\nproxy: {listen: '0.0.0.0:1'}",
        "x\n  - routes: []",
        "'quoted' \"double\" {braces: 1} [a, b] # comment",
        "&anchor *alias !!python/object:os.system",
    ],
)
def test_an_env_value_cannot_inject_yaml(tmp_path: Path, value: str) -> None:
    config = load(tmp_path, "audit:\n  stream: ${V}\n", env={"V": value}).config
    assert config.audit.stream == value
    assert config.proxy.listen == "127.0.0.1:8080"


def test_an_env_value_is_not_expanded_again(tmp_path: Path) -> None:
    config = load(tmp_path, "audit:\n  stream: ${V}\n", env={"V": "${SECRET}", "SECRET": "leaked"}).config
    assert config.audit.stream == "${SECRET}"


def test_an_env_value_with_a_line_break_cannot_split_an_injected_header(tmp_path: Path) -> None:
    text = ONE_UPSTREAM + "    headers:\n      Authorization: Bearer ${KEY}\n"
    problem = only_problem(tmp_path, text, env={"KEY": "k\r\nX-Tollbooth-Agent: admin"})
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: upstreams.crm: headers: Authorization: ")
    assert "line break" in problem


def test_an_unset_var_without_default_names_the_file_field_and_variable(tmp_path: Path) -> None:
    text = ONE_UPSTREAM + "    headers:\n      Authorization: Bearer ${CRM_API_KEY}\n"
    assert only_problem(tmp_path, text) == (
        f"{tmp_path / 'tollbooth.yaml'}: upstreams.crm: headers.Authorization: environment variable CRM_API_KEY "
        "is not set (set it, or write ${CRM_API_KEY:-default} to give a default)"
    )


def test_a_var_set_but_empty_without_default_is_an_error_that_says_empty(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "redis:\n  url: ${REDIS_URL}\n", env={"REDIS_URL": ""})
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: redis: url: environment variable REDIS_URL is empty")


def test_an_unset_var_in_a_route_names_the_route(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, route_yaml(path="/${PREFIX}/x"))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: routes[0] (r): path: environment variable PREFIX ")


def test_an_unset_var_in_the_routes_file_names_the_routes_file(tmp_path: Path) -> None:
    routes = "routes:\n  - name: ok\n    path: /ok\n  - name: r\n    path: /x\n    scopes: ['${SCOPE}']\n"
    problem = only_problem(tmp_path, ONE_UPSTREAM + "routes_file: routes.yaml\n", routes=routes)
    assert problem.startswith(f"{tmp_path / 'routes.yaml'}: routes[1] (r): scopes[0]: environment variable SCOPE ")


def test_every_unset_var_is_reported_at_once(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, "redis:\n  url: ${A}\naudit:\n  stream: ${B}\n")
    assert re.findall(r"variable (\w+)", "\n".join(problems)) == ["A", "B"]


def test_env_defaults_to_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLBOOTH_TEST_REDIS", "redis://from-env")
    path = write(tmp_path, "redis:\n  url: ${TOLLBOOTH_TEST_REDIS}\n")
    assert load_config(path).config.redis.url == "redis://from-env"


# ---------------------------------------------------------------- durations and rate limits


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30),
        ("5m", 300),
        ("24h", 86400),
        ("7d", 604800),
        ("250ms", 0.25),
        ("1.5h", 5400),
        (" 10 s ", 10),
        ("45", 45),
        (30, 30),
        (1.5, 1.5),
    ],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["5x", "5M", "-5s", "0s", 0, -1, True, "", "5 minutes", "s", float("inf"), float("nan")]
)
def test_bad_durations_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (ONE_UPSTREAM + "    timeout: 5x\n", "upstreams.crm: timeout: '5x' is not a duration"),
        (ONE_UPSTREAM + "    connect_timeout: -1\n", "upstreams.crm: connect_timeout: -1 is not a duration"),
        ("issuer:\n  access_token_ttl: forever\n", "issuer: access_token_ttl: 'forever' is not a duration"),
        ("proxy:\n  clock_leeway: .inf\n", "proxy: clock_leeway: inf is not a duration"),
        (
            "agents:\n  bot:\n    max_token_ttl: 10 minutes\n",
            "agents.bot: max_token_ttl: '10 minutes' is not a duration",
        ),
    ],
)
def test_a_bad_duration_names_the_file_and_field(tmp_path: Path, text: str, where: str) -> None:
    assert only_problem(tmp_path, text).startswith(f"{tmp_path / 'tollbooth.yaml'}: {where}")


def test_durations_in_the_config_become_seconds(tmp_path: Path) -> None:
    text = ONE_UPSTREAM + "    timeout: 250ms\n    connect_timeout: 2\nissuer:\n  access_token_ttl: 24h\n"
    config = load(tmp_path, text).config
    assert (config.upstreams["crm"].timeout, config.upstreams["crm"].connect_timeout) == (0.25, 2)
    assert config.issuer.access_token_ttl == 86400


@pytest.mark.parametrize(
    ("value", "limit", "window"),
    [
        ("60/minute", 60, 60),
        ("10/second", 10, 1),
        ("1000/hour", 1000, 3600),
        ("5000/day", 5000, 86400),
        ("5 / m", 5, 60),
    ],
)
def test_rate_limits(tmp_path: Path, value: str, limit: int, window: int) -> None:
    assert parse_rate_limit(value) == RateLimit(limit, window)
    assert load(tmp_path, route_yaml(rate_limit=value)).config.routes[0].rate_limit == RateLimit(limit, window)


@pytest.mark.parametrize("value", ["60 per minute", "0/minute", "-1/minute", "60/week", "60", 60, "1.5/second", ""])
def test_a_bad_rate_limit_names_the_route_and_field(tmp_path: Path, value: Any) -> None:
    problem = only_problem(tmp_path, route_yaml(rate_limit=value))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: routes[0] (r): rate_limit: ")
    assert "60/minute" in problem  # says what to write instead


# ---------------------------------------------------------------- routes_file


def test_routes_file_is_relative_to_the_config_file_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "etc", "routes:\n  - name: from-file\n    path: /f\n", "rules/routes.yaml")
    config_path = write(tmp_path / "etc", ONE_UPSTREAM + "routes_file: rules/routes.yaml\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_config(Path("..") / "etc" / config_path.name, env={})
    assert [r.name for r in loaded.config.routes] == ["from-file"]
    assert loaded.sources[1] == (tmp_path / "etc" / "rules" / "routes.yaml").resolve()


def test_routes_file_may_be_absolute(tmp_path: Path) -> None:
    routes = write(tmp_path / "shared", "routes:\n  - name: abs\n    path: /a\n", "routes.yaml")
    loaded = load(tmp_path, ONE_UPSTREAM + f"routes_file: {routes}\n")
    assert [r.name for r in loaded.config.routes] == ["abs"]


def test_routes_file_routes_come_after_inline_routes(tmp_path: Path) -> None:
    text = (
        ONE_UPSTREAM
        + "routes_file: routes.yaml\nroutes:\n  - name: inline-1\n    path: /1\n  - name: inline-2\n    path: /2\n"
    )
    routes = "routes:\n  - name: file-1\n    path: /3\n  - name: file-2\n    path: /4\n"
    loaded = load(tmp_path, text, routes=routes)
    assert [r.name for r in loaded.config.routes] == ["inline-1", "inline-2", "file-1", "file-2"]
    assert loaded.sources == (tmp_path / "tollbooth.yaml", (tmp_path / "routes.yaml").resolve())
    assert loaded.route_origin(1) == f"{tmp_path / 'tollbooth.yaml'}: routes[1]"
    assert loaded.route_origin(2) == f"{(tmp_path / 'routes.yaml').resolve()}: routes[0]"


def test_an_empty_routes_file_adds_no_routes(tmp_path: Path) -> None:
    loaded = load(tmp_path, route_yaml() + "routes_file: routes.yaml\n", routes="")
    assert [r.name for r in loaded.config.routes] == ["r"]


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        (
            "routes:\n  - name: ok\n    path: /ok\n  - name: typo-route\n    path: /x\n    methds: [GET]\n",
            'routes[1] (typo-route): unknown key "methds" (did you mean "methods"?)',
        ),
        ("route:\n  - name: a\n    path: /a\n", 'top level: unknown key "route" (did you mean "routes"?)'),
        ("- name: a\n  path: /a\n", "the top level must be a mapping with a `routes:` list"),
        ("routes:\n  - name: a\n    path: a\n", "routes[0] (a): path: 'a' must start with '/'"),
        ("routes:\n  - name: a\n    path: [/a\n", "not valid YAML (line 4, column 1)"),
        (
            "routes:\n  - name: a\n    path: /a\n    path: /b\n",
            'not valid YAML (line 4, column 5): key "path" appears twice',
        ),
    ],
)
def test_an_error_in_the_routes_file_names_the_routes_file(tmp_path: Path, routes: str, expected: str) -> None:
    problem = only_problem(tmp_path, ONE_UPSTREAM + "routes_file: routes.yaml\n", routes=routes)
    assert problem.startswith(f"{(tmp_path / 'routes.yaml').resolve()}: {expected}")


def test_a_missing_routes_file_is_named(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, ONE_UPSTREAM + "routes_file: nowhere.yaml\n")
    assert problem == f"{(tmp_path / 'nowhere.yaml').resolve()}: no such file; check the path"


def test_errors_in_both_files_are_reported_together(tmp_path: Path) -> None:
    text = ONE_UPSTREAM + "routes_file: routes.yaml\nproxy:\n  lissten: x\n"
    problems = problems_of(tmp_path, text, routes="routes:\n  - name: a\n    pth: /a\n")
    assert [p.split(": ")[0] for p in problems] == [
        str(tmp_path / "tollbooth.yaml"),
        str((tmp_path / "routes.yaml").resolve()),
    ]


def test_a_misspelt_required_key_is_one_problem_not_two(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, ONE_UPSTREAM + "routes:\n  - name: r\n    pth: /r\n")
    assert problem == f'{tmp_path / "tollbooth.yaml"}: routes[0] (r): unknown key "pth" (did you mean "path"?)'


def test_two_misspellings_of_one_key_are_both_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, ONE_UPSTREAM + "routes:\n  - name: r\n    pth: /r\n    paht: /r\n")
    assert [p.rsplit(": ", 1)[1] for p in problems] == [
        'unknown key "pth" (did you mean "path"?)',
        'unknown key "paht" (did you mean "path"?)',
    ]


# ---------------------------------------------------------------- unknown keys


def test_unknown_route_key_has_the_issue_format(tmp_path: Path) -> None:
    text = (
        ONE_UPSTREAM + "routes:\n  - name: ok\n    path: /ok\n  - name: typo-route\n    path: /x\n    methds: [GET]\n"
    )
    assert only_problem(tmp_path, text) == (
        f'{tmp_path / "tollbooth.yaml"}: routes[1] (typo-route): unknown key "methds" (did you mean "methods"?)'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rotues: []\n", 'top level: unknown key "rotues" (did you mean "routes"?)'),
        ("proxy:\n  lisen: 127.0.0.1:1\n", 'proxy: unknown key "lisen" (did you mean "listen"?)'),
        ("issuer:\n  key_dir: k\n", 'issuer: unknown key "key_dir" (did you mean "keys_dir"?)'),
        ("audit:\n  on_fail: deny\n", 'audit: unknown key "on_fail" (did you mean "on_failure"?)'),
        (ONE_UPSTREAM + "    timout: 5s\n", 'upstreams.crm: unknown key "timout" (did you mean "timeout"?)'),
        ("agents:\n  bot:\n    scope: [a]\n", 'agents.bot: unknown key "scope" (did you mean "scopes"?)'),
        (
            "trusted_issuers:\n  - issuer: https://idp.example\n    jwks_uri: https://idp.example/jwks\n"
            "    audience: [x]\n",
            'trusted_issuers[0] (https://idp.example): unknown key "audience" (did you mean "audiences"?)',
        ),
        (
            ONE_UPSTREAM + "routes:\n  - name: r\n    path: /r\n    scoped: [a]\n",
            'routes[0] (r): unknown key "scoped" (did you mean "scopes"?)',
        ),
        ("zzzz: 1\n", 'top level: unknown key "zzzz"'),
    ],
)
def test_unknown_keys_are_errors_with_a_suggestion(tmp_path: Path, text: str, expected: str) -> None:
    assert only_problem(tmp_path, text) == f"{tmp_path / 'tollbooth.yaml'}: {expected}"


# ---------------------------------------------------------------- cross-route rules


def test_duplicate_route_names_in_one_file(tmp_path: Path) -> None:
    text = ONE_UPSTREAM + "routes:\n  - name: a\n    path: /1\n  - name: a\n    path: /2\n"
    config = tmp_path / "tollbooth.yaml"
    assert only_problem(tmp_path, text) == (
        f"{config}: routes[1] (a): name: duplicate route name (first used by {config}: routes[0]); names must be unique"
    )


def test_duplicate_route_names_across_the_config_and_routes_file(tmp_path: Path) -> None:
    text = ONE_UPSTREAM + "routes_file: routes.yaml\nroutes:\n  - name: a\n    path: /1\n"
    problem = only_problem(tmp_path, text, routes="routes:\n  - name: b\n    path: /2\n  - name: a\n    path: /3\n")
    assert problem == (
        f"{(tmp_path / 'routes.yaml').resolve()}: routes[1] (a): name: duplicate route name "
        f"(first used by {tmp_path / 'tollbooth.yaml'}: routes[0]); names must be unique"
    )


def test_unknown_upstream(tmp_path: Path) -> None:
    assert only_problem(tmp_path, route_yaml(upstream="crn")) == (
        f'{tmp_path / "tollbooth.yaml"}: routes[0] (r): upstream: unknown upstream "crn" (did you mean "crm"?); '
        "known: crm"
    )


TWO_UPSTREAMS = "upstreams:\n  crm: {url: 'http://127.0.0.1:9000'}\n  billing: {url: 'http://127.0.0.1:9001'}\n"


def test_a_route_must_name_its_upstream_when_there_are_two(tmp_path: Path) -> None:
    text = TWO_UPSTREAMS + "routes:\n  - name: r\n    path: /r\n"
    assert only_problem(tmp_path, text) == (
        f"{tmp_path / 'tollbooth.yaml'}: routes[0] (r): upstream: required when there is more than one upstream "
        "(name one of: crm, billing)"
    )


def test_a_route_naming_one_of_two_upstreams_forwards_there(tmp_path: Path) -> None:
    config = load(tmp_path, TWO_UPSTREAMS + "routes:\n  - name: r\n    path: /r\n    upstream: billing\n").config
    assert config.upstream_for(config.routes[0]) == "billing"


def test_a_route_without_any_upstream_defined(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "routes:\n  - name: r\n    path: /r\n")
    where = f"{tmp_path / 'tollbooth.yaml'}: routes[0] (r): upstream"
    assert problem == f"{where}: no upstream to forward to; define one under `upstreams:`"


def test_a_public_route_cannot_require_scopes(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, route_yaml(public=True, scopes=["crm.read"]))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: routes[0] (r): scopes: a public route takes no token")


# ---------------------------------------------------------------- route fields

VALID_PATHS = [
    "/",
    "/v1/customers",
    "/v1/customers/",
    "/v1/customers/{id}",
    "/v1/customers/{id}/orders/{order_id}",
    "/files/{rest:path}",
    "/{_all:path}",
    "/v1/report.json",
    "/a-b_c~d/é",
    "/with space",
]


@pytest.mark.parametrize("path", VALID_PATHS)
def test_valid_path_patterns(tmp_path: Path, path: str) -> None:
    assert load(tmp_path, route_yaml(path=path)).config.routes[0].path == path


INVALID_PATHS = [
    ("v1/customers", "must start with '/'"),
    ("", "must start with '/'"),
    ("/files/{rest:path}/meta", "a {x:path} parameter must be the last segment"),
    ("/a/../b", "dot segment"),
    ("/a/./b", "dot segment"),
    ("/a/..", "dot segment"),
    ("/{1x}", "is not a parameter"),
    ("/{x-y}", "is not a parameter"),
    ("/{x:int}", "is not a parameter"),
    ("/{}", "is not a parameter"),
    ("/{x", "is not a parameter"),
    ("/a{x}", "has '{'"),
    ("/a}", "has '}'"),
    ("/a%2Fb", "has '%'"),
    ("/a;jsessionid=1", "has ';'"),
    ("/a?b=1", "has '?'"),
    ("/a#b", "has '#'"),
    ("/a\\b", "has '\\\\'"),
    ("/{id}/{id}", "parameter {id} appears twice"),
    ("/a\tb", "control character"),
    ("/a\x7fb", "control character"),
]


@pytest.mark.parametrize(("path", "expected"), INVALID_PATHS)
def test_invalid_path_patterns_name_the_route_and_field(tmp_path: Path, path: str, expected: str) -> None:
    problem = only_problem(tmp_path, route_yaml(path=path))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: routes[0] (r): path: ")
    assert expected in problem


def test_methods_are_upper_cased(tmp_path: Path) -> None:
    assert load(tmp_path, route_yaml(methods=["get", "Post"])).config.routes[0].methods == ["GET", "POST"]


@pytest.mark.parametrize("method", HTTP_METHODS)
def test_every_proxied_method_is_accepted(tmp_path: Path, method: str) -> None:
    assert load(tmp_path, route_yaml(methods=[method])).config.routes[0].methods == [method]


@pytest.mark.parametrize(
    ("methods", "expected"),
    [
        ([], "an empty list matches nothing: leave `methods` out to allow all methods"),
        (["FETCH"], "unknown method 'FETCH'; allowed: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        (["GET", "TRACE"], "TRACE is never proxied"),
        (["CONNECT"], "CONNECT is never proxied"),
        ("GET", "must be a list"),
        ([1], "must be a valid string"),
    ],
)
def test_invalid_methods(tmp_path: Path, methods: Any, expected: str) -> None:
    problem = only_problem(tmp_path, route_yaml(methods=methods))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: routes[0] (r): methods")
    assert expected in problem


@pytest.mark.parametrize(
    "scope", ["crm.read", "crm:write", "https://api.example.com/read", "a!#$%&'()*+,-./:;<=>?@[]^_`{|}~"]
)
def test_valid_scopes(tmp_path: Path, scope: str) -> None:
    config = load(tmp_path, route_yaml(scopes=[scope]) + f"agents:\n  bot:\n    scopes: [{json.dumps(scope)}]\n").config
    assert config.routes[0].scopes == [scope]
    assert config.agents["bot"].scopes == [scope]


@pytest.mark.parametrize("scope", ["crm read", 'crm"read', "crm\\read", "", "crm\tread", "é"])
def test_invalid_scopes_are_refused_in_routes_and_agents(tmp_path: Path, scope: str) -> None:
    problem = only_problem(tmp_path, route_yaml(scopes=[scope]))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: routes[0] (r): scopes: ")
    assert "RFC 6749 §3.3" in problem
    problem = only_problem(tmp_path, f"agents:\n  bot:\n    scopes: [{json.dumps(scope)}]\n")
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: agents.bot: scopes: ")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"name": "has space"}, "name: 'has space': use letters, digits"),
        ({"name": "-leading"}, "name: '-leading': use letters, digits"),
        ({"delegation": "sometimes"}, "delegation: must be 'allowed', 'required' or 'forbidden' (got 'sometimes')"),
        ({"public": "maybe"}, "public: must be a valid boolean"),
    ],
)
def test_other_invalid_route_fields(tmp_path: Path, fields: dict[str, Any], expected: str) -> None:
    problem = only_problem(tmp_path, route_yaml(**fields))
    assert expected in problem
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: routes[0]")


def test_a_route_missing_a_required_key(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, ONE_UPSTREAM + "routes:\n  - name: r\n")
    assert problem == f'{tmp_path / "tollbooth.yaml"}: routes[0] (r): required key "path" is missing'


# ---------------------------------------------------------------- upstreams: injected headers


def headers_yaml(headers: dict[str, str]) -> str:
    return yaml.safe_dump({"upstreams": {"crm": {"url": "http://127.0.0.1:9000", "headers": headers}}})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Bad Name": "x"}, "'Bad Name' is not a valid header name"),
        ({"X:Y": "x"}, "'X:Y' is not a valid header name"),
        ({"": "x"}, "'' is not a valid header name"),
        ({"Authorization": "Bearer a\r\nX-Evil: 1"}, "Authorization: the value has a line break"),
        ({"Authorization": "Bearer a\nb"}, "Authorization: the value has a line break"),
        ({"Authorization": "Bearer a\rb"}, "Authorization: the value has a line break"),
        ({"Authorization": "Bearer a\x00b"}, "Authorization: the value has a line break, NUL"),
        ({"X-Key": "caf€"}, "X-Key: the value has characters a header cannot carry"),
        ({"Host": "evil.example"}, "Host: the gateway sets this header itself"),
        ({"content-length": "0"}, "content-length: the gateway sets this header itself"),
        ({"Transfer-Encoding": "chunked"}, "Transfer-Encoding: the gateway sets this header itself"),
        ({"Connection": "close"}, "Connection: the gateway sets this header itself"),
        ({"X-Tollbooth-Agent": "admin"}, "X-Tollbooth-Agent: the gateway sets this header itself"),
        ({"traceparent": "00-x"}, "traceparent: the gateway sets this header itself"),
        ({"Authorization": "a", "authorization": "b"}, "authorization: given twice (also as Authorization)"),
    ],
)
def test_invalid_injected_headers(tmp_path: Path, headers: dict[str, str], expected: str) -> None:
    problem = only_problem(tmp_path, headers_yaml(headers))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: upstreams.crm: headers: ")
    assert expected in problem


def test_valid_injected_headers(tmp_path: Path) -> None:
    headers = {"Authorization": "Bearer abc", "X-Api-Key": "k\tv", "X-Tenant": "café"}
    assert load(tmp_path, headers_yaml(headers)).config.upstreams["crm"].headers == headers


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://files.example", "is not an http(s) URL"),
        ("127.0.0.1:9000", "is not an http(s) URL"),
        ("http://", "is not an http(s) URL"),
        ("http://api.example/?a=1", "must not have a query or fragment"),
        ("http://api.example:99999", "has an invalid port"),
        ("http://user:hunter2@api.example", "no user or password in the URL"),
    ],
)
def test_invalid_upstream_urls(tmp_path: Path, url: str, expected: str) -> None:
    problem = only_problem(tmp_path, yaml.safe_dump({"upstreams": {"crm": {"url": url}}}))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: upstreams.crm: url: ")
    assert expected in problem
    assert "hunter2" not in problem  # a password in a URL is never echoed


def test_upstream_url_loses_its_trailing_slash(tmp_path: Path) -> None:
    config = load(tmp_path, "upstreams:\n  crm: {url: 'http://api.example/base/'}\n").config
    assert config.upstreams["crm"].url == "http://api.example/base"


# ---------------------------------------------------------------- other sections


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 2\n", "version: must be 1 (got 2)"),
        ("proxy:\n  listen: '8080'\n", "proxy: listen: '8080' is not host:port"),
        ("admin:\n  listen: 'localhost:0'\n", "admin: listen: 'localhost:0' is not host:port"),
        (
            "proxy:\n  public_url: gateway.example\n",
            "proxy: public_url: 'gateway.example' is not an http(s) URL like https://api.example.com",
        ),
        ("proxy:\n  max_body_bytes: -1\n", "proxy: max_body_bytes: must be greater than 0 (got -1)"),
        (
            "proxy:\n  max_token_bytes: lots\n",
            "proxy: max_token_bytes: must be a valid integer, unable to parse string as an integer (got 'lots')",
        ),
        (
            "issuer:\n  algorithm: HS256\n",
            "issuer: algorithm: must be 'ES256', 'EdDSA', 'RS256' or 'PS256' (got 'HS256')",
        ),
        ("audit:\n  on_failure: ignore\n", "audit: on_failure: must be 'spool' or 'deny' (got 'ignore')"),
        (
            "trusted_issuers:\n  - issuer: https://idp.example\n    jwks_uri: http://idp.example/jwks\n",
            "trusted_issuers[0] (https://idp.example): jwks_uri: 'http://idp.example/jwks': "
            "a JWKS is fetched over https (plain http only for loopback addresses)",
        ),
        ("upstreams:\n  crm: {}\n", 'upstreams.crm: required key "url" is missing'),
        ("routes: {name: x}\n", "routes: must be a list (e.g. [a, b] or one `- item` per line), not a mapping"),
        ("routes: [just-a-name]\n", "routes[0]: must be a mapping of keys, not a string"),
        ("proxy: 8080\n", "proxy: must be a mapping of keys, not a number"),
    ],
)
def test_invalid_values_name_the_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    assert only_problem(tmp_path, text) == f"{tmp_path / 'tollbooth.yaml'}: {expected}"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = "proxy:\n  listen: nope\naudit:\n  on_failure: x\n" + ONE_UPSTREAM + "    timeout: soon\n"
    assert len(problems_of(tmp_path, text)) == 3


# ---------------------------------------------------------------- the file itself


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "the top level must be a mapping of keys (version, proxy, upstreams, routes, …), not a list"),
        (
            "just a string\n",
            "the top level must be a mapping of keys (version, proxy, upstreams, routes, …), not a string",
        ),
        ("42\n", "not a number"),
    ],
)
def test_the_top_level_must_be_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    problem = only_problem(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: ")
    assert problem.endswith(expected)


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("proxy:\n  listen: [unclosed\nadmin: {}\n", 3, 6),
        ("proxy:\n\tlisten: x\n", 2, 1),
        ("routes:\n  - name: a\n   path: /a\n", 3, 4),
        ("proxy: {listen: x}\nproxy: {listen: y}\n", 2, 1),
    ],
)
def test_invalid_yaml_names_the_file_line_and_column(tmp_path: Path, text: str, line: int, column: int) -> None:
    problem = only_problem(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: not valid YAML (line {line}, column {column}): ")


def test_a_key_given_twice_is_an_error_not_a_silent_override(tmp_path: Path) -> None:
    text = ONE_UPSTREAM + "routes:\n  - name: a\n    path: /a\n    scopes: [admin]\n    scopes: []\n"
    problem = only_problem(tmp_path, text)
    assert 'key "scopes" appears twice in one mapping (first on line 8)' in problem


def test_a_yaml_merge_key_may_be_overridden(tmp_path: Path) -> None:
    text = "upstreams:\n  a: &base {url: 'http://127.0.0.1:1', timeout: 5s}\n  b:\n    <<: *base\n    timeout: 9s\n"
    config = load(tmp_path, text).config
    assert (config.upstreams["b"].url, config.upstreams["b"].timeout) == ("http://127.0.0.1:1", 9)


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, "redis:\n  url: !!python/object/apply:os.getcwd []\n")
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: not valid YAML (line 2, column 8)")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.yaml", env={})
    assert caught.value.problems == [f"{tmp_path / 'absent.yaml'}: no such file; check the path"]


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, env={})
    assert caught.value.problems[0].startswith(f"{tmp_path}: cannot read: ")


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("redis:\n  url: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert caught.value.problems == [f"{path}: not UTF-8 text (byte 17); save the file as UTF-8"]


# ---------------------------------------------------------------- config_schema


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_schema_is_json_schema_for_the_whole_file() -> None:
    schema = config_schema()
    json.dumps(schema)  # serializable as it is
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["type"] == "object"
    assert set(schema["properties"]) >= {
        "version",
        "proxy",
        "issuer",
        "admin",
        "redis",
        "audit",
        "upstreams",
        "agents",
        "trusted_issuers",
        "routes_file",
        "routes",
    }
    route = _resolve(schema, schema["properties"]["routes"]["items"])
    assert set(route["properties"]) == {
        "name",
        "path",
        "upstream",
        "methods",
        "scopes",
        "delegation",
        "rate_limit",
        "public",
        "mcp",
        "approval",
        "approval_wait",
        "approval_valid_for",
    }
    assert set(route["required"]) == {"name", "path"}


def test_schema_rejects_unknown_keys_everywhere() -> None:
    schema = config_schema()
    assert schema["additionalProperties"] is False
    models = [d for d in schema["$defs"].values() if "properties" in d]
    assert len(models) >= 8
    for model in models:
        assert model["additionalProperties"] is False, model["title"]


@pytest.mark.parametrize(
    ("value", "valid"), [("30s", True), ("250ms", True), ("7d", True), ("1.5h", True), ("5x", False), ("-1s", False)]
)
def test_schema_accepts_durations_as_written(value: str, valid: bool) -> None:
    schema = config_schema()
    timeout = _resolve(schema, schema["$defs"]["UpstreamConfig"])["properties"]["timeout"]
    patterns = [branch["pattern"] for branch in timeout["anyOf"] if branch.get("type") == "string"]
    assert {branch.get("type") for branch in timeout["anyOf"]} == {"number", "string"}
    assert bool(re.search(patterns[0], value)) is valid


@pytest.mark.parametrize(
    ("value", "valid"), [("60/minute", True), ("10/second", True), ("5000/day", True), ("60 per minute", False)]
)
def test_schema_takes_rate_limits_as_strings(value: str, valid: bool) -> None:
    rate_limit = config_schema()["$defs"]["RouteConfig"]["properties"]["rate_limit"]
    string = next(branch for branch in rate_limit["anyOf"] if branch.get("type") == "string")
    assert bool(re.search(string["pattern"], value)) is valid


def test_every_key_of_the_example_config_is_in_the_schema() -> None:
    schema = config_schema()
    example = yaml.safe_load((ROOT / "config" / "example.yaml").read_text())
    routes = yaml.safe_load((ROOT / "config" / "routes.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], where: str) -> None:
        node = _resolve(schema, node)
        if "anyOf" in node:
            objects = [_resolve(schema, b) for b in node["anyOf"] if _resolve(schema, b).get("type") == "object"]
            node = objects[0] if objects else node
        if isinstance(value, dict) and "properties" in node:
            for key, child in value.items():
                assert key in node["properties"], f"{where}.{key} is not in the schema"
                walk(child, node["properties"][key], f"{where}.{key}")
        elif isinstance(value, dict) and isinstance(node.get("additionalProperties"), dict):
            for key, child in value.items():
                walk(child, node["additionalProperties"], f"{where}.{key}")
        elif isinstance(value, list) and "items" in node:
            for i, child in enumerate(value):
                walk(child, node["items"], f"{where}[{i}]")

    walk(example, schema, "example.yaml")
    walk(routes, schema, "routes.yaml")


# ---------------------------------------------------------------- subject prefixes of trusted issuers


def _issuers(*prefixes: str | None) -> str:
    lines = ["trusted_issuers:"]
    for n, prefix in enumerate(prefixes):
        lines += [f"  - issuer: https://idp{n}.example", f"    jwks_uri: https://idp{n}.example/jwks"]
        if prefix is not None:
            lines.append(f"    subject_prefix: {json.dumps(prefix)}")
    return "\n".join(lines) + "\n"


def test_one_trusted_issuer_needs_no_prefix(tmp_path: Path) -> None:
    assert load(tmp_path, _issuers(None)).config.trusted_issuers[0].subject_prefix == ""


def test_distinct_prefixes_are_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, _issuers("okta:", "entra:")).config
    assert [t.subject_prefix for t in config.trusted_issuers] == ["okta:", "entra:"]


def test_two_issuers_without_a_prefix_are_refused_naming_the_entry(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, _issuers("okta:", None))
    assert problem.startswith(f"{tmp_path / 'tollbooth.yaml'}: trusted_issuers[1] (https://idp1.example): ")
    assert "subject_prefix: required when more than one issuer is trusted" in problem


def test_a_prefix_beginning_another_is_refused(tmp_path: Path) -> None:
    problem = only_problem(tmp_path, _issuers("okta:", "okta:eu:"))
    assert "trusted_issuers[0] (https://idp0.example): subject_prefix: 'okta:' begins" in problem


@pytest.mark.parametrize("prefix", ["has space:", "tab\t", "x" * 65, "new\nline"])
def test_a_prefix_with_odd_characters_is_refused(tmp_path: Path, prefix: str) -> None:
    assert "trusted_issuers[0] (https://idp0.example): subject_prefix: " in only_problem(tmp_path, _issuers(prefix))
