"""The `tollbooth` command: the real CLI in a subprocess (`python -m gateway …`, cwd a temp dir), and in-process
through gateway.cli.main where that is simpler. Nothing here listens on a socket."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from argon2 import PasswordHasher

from gateway import __version__
from gateway.cli import main
from gateway.issuer.keystore import generate_key, utc_text
from gateway.tokens.jwk import SigningKey

CONFIG = """\
version: 1
issuer:
  keys_dir: {keys}
upstreams:
  crm:
    url: http://127.0.0.1:9
agents:
  billing-bot:
    scopes: [crm.read, crm.write]
    max_token_ttl: 10m
  reader:
    scopes: [crm.read]
routes_file: routes.yaml
routes:
  - name: get-customer
    methods: [GET, HEAD]
    path: /v1/customers/{{id}}
    scopes: [crm.read]
  - name: create-customer
    methods: [POST]
    path: /v1/customers
    scopes: [crm.write]
"""

ROUTES = """\
routes:
  - name: on-behalf
    path: /v1/on-behalf
    scopes: [crm.read]
    delegation: required
  - name: status
    methods: [GET]
    path: /status
    public: true
"""


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Project:
    dir: Path
    config: Path
    routes: Path
    keys: Path

    def write_routes(self, text: str) -> None:
        self.routes.write_text(textwrap.dedent(text))


@pytest.fixture
def project(tmp_path: Path) -> Project:
    keys = tmp_path / "keys"
    config = tmp_path / "tollbooth.yaml"
    config.write_text(CONFIG.format(keys=keys))
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    return Project(tmp_path, config, routes, keys)


def tollbooth(cwd: Path, *args: str, stdin: str | None = None) -> Result:
    """The real command, as a user runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """gateway.cli.main in this process; SystemExit (argparse, config errors) becomes the exit code."""

    def run(*args: str) -> Result:
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


# ---------------------------------------------------------------- --help and --version

VERBS = [
    ("serve",),
    ("check",),
    ("explain",),
    ("token",),
    ("keys",),
    ("keys", "generate"),
    ("keys", "rotate"),
    ("keys", "prune"),
    ("keys", "list"),
    ("revoke",),
    ("schema",),
    ("hash-secret",),
    ("demo",),
]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(tmp_path: Path, verb: tuple[str, ...]) -> None:
    result = tollbooth(tmp_path, *verb, "--help")
    assert result.code == 0, result.err
    assert result.out.startswith(f"usage: tollbooth {' '.join(verb)}")
    assert result.err == ""


def test_top_level_help_lists_every_verb(tmp_path: Path) -> None:
    result = tollbooth(tmp_path, "--help")
    assert result.code == 0
    for verb in ("serve", "check", "explain", "token", "keys", "schema", "hash-secret", "demo"):
        assert verb in result.out


def test_version(tmp_path: Path) -> None:
    result = tollbooth(tmp_path, "--version")
    assert (result.code, result.out.strip()) == (0, f"tollbooth {__version__}")


def test_no_verb_is_a_usage_error(tmp_path: Path) -> None:
    result = tollbooth(tmp_path)
    assert result.code == 2
    assert "usage: tollbooth" in result.err


def test_explain_help_documents_its_exit_status(tmp_path: Path) -> None:
    out = tollbooth(tmp_path, "explain", "--help").out
    assert "exit status" in out
    assert "0  the proxy would forward" in out
    assert "1  the proxy would refuse" in out
    assert "2  explain could not answer" in out


# ---------------------------------------------------------------- check


def test_check_a_valid_config_prints_ok(project: Project) -> None:
    result = tollbooth(project.dir, "check", "--config", "tollbooth.yaml")
    assert result.code == 0, result.err
    assert result.out == f"ok: tollbooth.yaml, {project.routes}: 4 routes, 1 upstream, 2 agents\n"
    assert result.err == ""


def test_check_a_typo_names_file_rule_and_field_on_stderr(project: Project) -> None:
    project.write_routes("""\
        routes:
          - name: fine
            path: /fine
          - name: typo-route
            path: /x
            methds: [GET]
        """)
    result = tollbooth(project.dir, "check", "--config", "tollbooth.yaml")
    assert result.code == 1
    assert result.out == ""
    assert (
        result.err
        == f'error: {project.routes}: routes[1] (typo-route): unknown key "methds" (did you mean "methods"?)\n'
    )


def test_check_reports_every_problem_one_per_line(project: Project, cli: Callable[..., Result]) -> None:
    project.config.write_text(project.config.read_text() + "proxy:\n  listen: nowhere\naudit:\n  on_failure: shrug\n")
    result = cli("check", "--config", str(project.config))
    assert result.code == 1
    assert result.err.splitlines() == [
        f"error: {project.config}: proxy: listen: 'nowhere' is not host:port",
        f"error: {project.config}: audit: on_failure: must be 'spool' or 'deny' (got 'shrug')",
    ]


def test_check_a_missing_config_file(tmp_path: Path) -> None:
    result = tollbooth(tmp_path, "check", "--config", "absent.yaml")
    assert result.code == 1
    assert result.err == f"error: absent.yaml: no such file (relative to {tmp_path}); check the path\n"


def test_check_reads_the_config_named_by_the_environment(project: Project) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check"],
        cwd=project.dir,
        env={"TOLLBOOTH_CONFIG": str(project.config), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"ok: {project.config}")


@pytest.mark.parametrize(
    ("routes", "warning"),
    [
        (
            """\
            routes:
              - name: first
                methods: [GET]
                path: /v1/items/{id}
              - name: second
                methods: [GET]
                path: /v1/items/{item}
            """,
            r'route "second" \(.*routes\[\d\]\) duplicates route "first" \(.*routes\[\d\]\): same path pattern',
        ),
        (
            """\
            routes:
              - name: reads
                methods: [GET, HEAD]
                path: /v1/things
              - name: everything
                path: /v1/things
            """,
            r'route "everything" \(.*routes\[\d\]\) is partly shadowed by route "reads" \(.*routes\[\d\]\)',
        ),
    ],
    ids=["duplicate", "shadowed"],
)
def test_check_warns_about_duplicate_and_shadowed_routes(
    project: Project, cli: Callable[..., Result], routes: str, warning: str
) -> None:
    project.write_routes(routes)
    result = cli("check", "--config", str(project.config))
    assert result.code == 0
    assert result.out.startswith("ok: ")
    # The rule's exact position label is authorize.route_warnings' to choose; the rules and the verdict are ours.
    assert re.match(f"warning: {warning}", result.err)

    strict = cli("check", "--strict", "--config", str(project.config))
    assert strict.code == 1
    assert strict.out == ""
    assert re.match(f"warning: {warning}", strict.err)
    assert strict.err.endswith("error: 1 warning(s), and --strict treats warnings as errors\n")


def test_check_strict_refuses_a_config_without_routes(tmp_path: Path, cli: Callable[..., Result]) -> None:
    """Default deny makes it valid, but `0 routes` passing a deploy-time check would deny everything."""
    (tmp_path / "tollbooth.yaml").write_text("version: 1\nroutes_file: routes.yaml\n")
    (tmp_path / "routes.yaml").write_text("routes: []\n")
    lenient = cli("check", "--config", str(tmp_path / "tollbooth.yaml"))
    assert lenient.code == 0 and lenient.out.startswith("ok: ") and "0 routes" in lenient.out
    assert lenient.err.startswith("warning: no routes: every request to the proxy is denied (403)")
    strict = cli("check", "--strict", "--config", str(tmp_path / "tollbooth.yaml"))
    assert strict.code == 1 and strict.out == ""


def test_check_strict_passes_a_clean_config(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("check", "--strict", "--config", str(project.config))
    assert (result.code, result.err) == (0, "")


# ---------------------------------------------------------------- schema


def test_schema_prints_json_schema(tmp_path: Path) -> None:
    result = tollbooth(tmp_path, "schema")
    assert result.code == 0, result.err
    schema = json.loads(result.out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"proxy", "issuer", "upstreams", "agents", "routes", "routes_file"} <= set(schema["properties"])
    assert schema["additionalProperties"] is False


# ---------------------------------------------------------------- token


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def test_token_prints_a_signed_at_jwt(project: Project) -> None:
    result = tollbooth(
        project.dir, "token", "--config", "tollbooth.yaml", "--agent", "billing-bot", "--scope", "crm.read"
    )
    assert result.code == 0, result.err
    token = result.out.strip()
    header = jwt.get_unverified_header(token)
    assert (header["typ"], header["alg"]) == ("at+jwt", "ES256")
    claims = claims_of(token)
    assert (claims["sub"], claims["client_id"], claims["scope"]) == ("billing-bot", "billing-bot", "crm.read")
    assert claims["aud"] == "http://127.0.0.1:8080"
    assert claims["iss"] == "http://127.0.0.1:8081"
    assert claims["exp"] - claims["iat"] == 300
    assert "act" not in claims
    assert any(project.keys.glob("*.pem")), "the first token generates a development key"


def test_token_json_is_a_token_response(project: Project, cli: Callable[..., Result]) -> None:
    result = cli(
        "token", "--config", str(project.config), "--agent", "billing-bot", "--scope", "crm.read crm.write", "--json"
    )
    assert result.code == 0, result.err
    response = json.loads(result.out)
    assert set(response) == {"access_token", "token_type", "expires_in", "scope", "claims"}
    assert response["token_type"] == "Bearer"
    assert response["expires_in"] == 300
    assert response["scope"] == "crm.read crm.write"
    assert response["claims"] == claims_of(response["access_token"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--agent", "reader", "--scope", "crm.read crm.write"],
            "error: agent 'reader' may not hold crm.write (agents.reader.scopes allows: crm.read)",
        ),
        (["--agent", "billing-bot", "--scope", "admin"], "error: agent 'billing-bot' may not hold admin"),
        (["--agent", "stranger", "--scope", "crm.read"], "error: {config}: no agent 'stranger' under `agents:`"),
        (["--agent", "billing-bot", "--ttl", "1h"], "error: --ttl 1h: agent 'billing-bot' may hold tokens for at most"),
    ],
    ids=["scope-outside-allowance", "unknown-scope", "unknown-agent", "ttl-over-max"],
)
def test_token_refuses_what_the_agent_may_not_hold(
    project: Project, cli: Callable[..., Result], args: list[str], message: str
) -> None:
    result = cli("token", "--config", str(project.config), *args)
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith(message.format(config=project.config))


def test_token_with_a_bad_ttl_is_a_usage_error(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("token", "--config", str(project.config), "--agent", "reader", "--ttl", "soon")
    assert result.code == 2
    assert result.err == "error: --ttl: 'soon' is not a duration: use 30s, 5m, 24h, or a number of seconds\n"


def test_token_ttl_defaults_to_issuer_ttl_capped_by_the_agent(project: Project, cli: Callable[..., Result]) -> None:
    project.config.write_text(project.config.read_text().replace("  keys_dir:", "  access_token_ttl: 1h\n  keys_dir:"))
    capped = json.loads(cli("token", "--config", str(project.config), "--agent", "billing-bot", "--json").out)
    assert capped["expires_in"] == 600  # billing-bot's max_token_ttl
    uncapped = json.loads(cli("token", "--config", str(project.config), "--agent", "reader", "--json").out)
    assert uncapped["expires_in"] == 3600
    short = json.loads(cli("token", "--config", str(project.config), "--agent", "reader", "--ttl", "90s", "--json").out)
    assert short["expires_in"] == 90


def test_token_act_nests_the_delegation_chain_outermost_first(project: Project, cli: Callable[..., Result]) -> None:
    args = ["--agent", "billing-bot", "--scope", "crm.read", "--subject", "user:alice"]
    result = cli("token", "--config", str(project.config), *args, "--act", "orchestrator", "--act", "billing-bot")
    assert result.code == 0, result.err
    claims = claims_of(result.out.strip())
    assert claims["sub"] == "user:alice"
    assert claims["client_id"] == "billing-bot"
    assert claims["act"] == {"sub": "orchestrator", "act": {"sub": "billing-bot"}}


def test_token_for_a_subject_names_the_agent_as_actor(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("token", "--config", str(project.config), "--agent", "billing-bot", "--subject", "user:alice")
    claims = claims_of(result.out.strip())
    assert (claims["sub"], claims["act"]) == ("user:alice", {"sub": "billing-bot"})


# ---------------------------------------------------------------- keys


def test_keys_generate_then_list_shows_two_keys_newest_active(project: Project) -> None:
    first = tollbooth(project.dir, "keys", "generate", "--config", "tollbooth.yaml")
    second = tollbooth(project.dir, "keys", "generate", "--config", "tollbooth.yaml")
    assert (first.code, second.code) == (0, 0), first.err + second.err
    assert "now the active signing key" in second.out
    newest_kid = second.out.split()[3]

    listing = tollbooth(project.dir, "keys", "list", "--config", "tollbooth.yaml")
    assert listing.code == 0, listing.err
    lines = listing.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"* {newest_kid}  ES256")
    assert lines[1].startswith("  ")

    rows = json.loads(tollbooth(project.dir, "keys", "list", "--config", "tollbooth.yaml", "--json").out)
    assert [(row["kid"] == newest_kid, row["active"]) for row in rows] == [(True, True), (False, False)]
    assert all(row["algorithm"] == "ES256" for row in rows)


def test_keys_rotate_adds_a_new_active_key(project: Project, cli: Callable[..., Result]) -> None:
    assert cli("keys", "generate", "--config", str(project.config)).code == 0
    rotated = cli("keys", "rotate", "--config", str(project.config))
    assert rotated.code == 0, rotated.err
    rows = json.loads(cli("keys", "list", "--config", str(project.config), "--json").out)
    assert len(rows) == 2
    assert rows[0]["active"] and rows[0]["kid"] in rotated.out


def test_keys_list_without_keys_says_what_to_do(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("keys", "list", "--config", str(project.config))
    assert result.code == 1
    assert result.err == f"error: {project.keys}: no such directory; create a key with `tollbooth keys generate`\n"


def test_keys_generate_into_another_directory(project: Project, cli: Callable[..., Result]) -> None:
    other = project.dir / "other-keys"
    result = cli("keys", "generate", "--config", str(project.config), "--keys-dir", str(other), "--algorithm", "EdDSA")
    assert result.code == 0, result.err
    assert "signs only once issuer.algorithm is EdDSA" in result.out
    assert [p.name.endswith("-EdDSA.pem") for p in other.glob("*.pem")] == [True]


# The test config's token lifetime: access_token_ttl 5m + clock_leeway 30s + 60s reload margin.
LIFETIME = 300 + 30 + 60


@dataclass
class AgedKeys:
    expired: SigningKey  # retired long ago: its file goes at the next rotate or prune
    retired: SigningKey  # signed until 100 s ago: published for LIFETIME - 100 s more
    active: SigningKey
    next: SigningKey  # a newer EdDSA key, not in use while issuer.algorithm is ES256
    kept: SigningKey  # the only RS256 key: expired, but kept in case the config switches back


def aged_keys(project: Project) -> AgedKeys:
    now = time.time()
    return AgedKeys(
        kept=generate_key(project.keys, "RS256", now=now - 200_000),
        expired=generate_key(project.keys, "ES256", now=now - 100_000),
        retired=generate_key(project.keys, "ES256", now=now - 50_000),
        active=generate_key(project.keys, "ES256", now=now - 100),
        next=generate_key(project.keys, "EdDSA", now=now - 50),
    )


def test_keys_list_shows_each_keys_state(project: Project, cli: Callable[..., Result]) -> None:
    keys = aged_keys(project)
    result = cli("keys", "list", "--config", str(project.config))
    assert result.code == 0, result.err
    until = utc_text(keys.active.created_at + LIFETIME)
    assert result.out.splitlines() == [
        f"  {keys.next.kid}  EdDSA  {utc_text(keys.next.created_at)}  next",
        f"* {keys.active.kid}  ES256  {utc_text(keys.active.created_at)}  active",
        f"  {keys.retired.kid}  ES256  {utc_text(keys.retired.created_at)}  retired, published until {until}",
        f"  {keys.expired.kid}  ES256  {utc_text(keys.expired.created_at)}  "
        "expired (not published; pruned by keys rotate|prune)",
        f"  {keys.kept.kid}  RS256  {utc_text(keys.kept.created_at)}  "
        "expired (not published; kept as the newest RS256 key)",
    ]


def test_keys_list_json_has_the_state_as_fields(project: Project, cli: Callable[..., Result]) -> None:
    keys = aged_keys(project)
    result = cli("keys", "list", "--config", str(project.config), "--json")
    assert result.code == 0, result.err
    rows = {row["kid"]: row for row in json.loads(result.out)}
    assert {kid: (row["state"], row["published"], row["prunable"]) for kid, row in rows.items()} == {
        keys.next.kid: ("next", True, False),
        keys.active.kid: ("active", True, False),
        keys.retired.kid: ("retired", True, False),
        keys.expired.kid: ("expired", False, True),
        keys.kept.kid: ("expired", False, False),
    }
    retired = rows[keys.retired.kid]
    assert retired["retired"] == utc_text(keys.active.created_at)
    assert retired["published_until"] == utc_text(keys.active.created_at + LIFETIME)
    assert (rows[keys.active.kid]["retired"], rows[keys.active.kid]["published_until"]) == (None, None)
    assert [kid for kid, row in rows.items() if row["active"]] == [keys.active.kid]


def test_keys_rotate_prunes_expired_key_files_only(project: Project, cli: Callable[..., Result]) -> None:
    keys = aged_keys(project)
    result = cli("keys", "rotate", "--config", str(project.config))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("generated ES256 key ") and "now the active signing key" in lines[0]
    assert lines[1] == (
        f"deleted {keys.expired.path} (kid {keys.expired.kid}, ES256, "
        f"published until {utc_text(keys.retired.created_at + LIFETIME)})"
    )
    remaining = {path.name for path in project.keys.glob("*.pem")}
    assert keys.expired.path is not None and keys.expired.path.name not in remaining
    assert {k.path.name for k in (keys.kept, keys.retired, keys.active, keys.next) if k.path} <= remaining
    assert len(remaining) == 5  # four kept plus the new one


def test_keys_rotate_dry_run_deletes_nothing(project: Project, cli: Callable[..., Result]) -> None:
    keys = aged_keys(project)
    before = sorted(project.keys.iterdir())
    result = cli("keys", "rotate", "--config", str(project.config), "--dry-run")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"would generate a new ES256 key in {project.keys}",
        f"would delete {keys.expired.path} (kid {keys.expired.kid}, ES256, "
        f"published until {utc_text(keys.retired.created_at + LIFETIME)})",
    ]
    assert sorted(project.keys.iterdir()) == before


def test_keys_prune_deletes_expired_keys_and_generates_none(project: Project, cli: Callable[..., Result]) -> None:
    keys = aged_keys(project)
    dry = cli("keys", "prune", "--config", str(project.config), "--dry-run")
    assert dry.code == 0 and dry.out.startswith(f"would delete {keys.expired.path} "), dry.err
    assert keys.expired.path is not None and keys.expired.path.exists()
    pruned = cli("keys", "prune", "--config", str(project.config))
    assert pruned.code == 0 and pruned.out.startswith(f"deleted {keys.expired.path} "), pruned.err
    assert len(list(project.keys.glob("*.pem"))) == 4
    again = cli("keys", "prune", "--config", str(project.config))
    assert again.out == "no expired keys to delete\n"


def test_keys_generate_does_not_prune(project: Project, cli: Callable[..., Result]) -> None:
    keys = aged_keys(project)
    result = cli("keys", "generate", "--config", str(project.config))
    assert result.code == 0, result.err
    assert len(result.out.splitlines()) == 1
    assert keys.expired.path is not None and keys.expired.path.exists()


def test_keys_rotate_creates_private_files_in_a_private_directory(project: Project) -> None:
    # The real command under a permissive umask (inherited by the child): 0600 and 0700 must not depend on it.
    previous_umask = os.umask(0)
    try:
        result = tollbooth(project.dir, "keys", "rotate", "--config", "tollbooth.yaml")
    finally:
        os.umask(previous_umask)
    assert result.code == 0, result.err
    (path,) = project.keys.glob("*.pem")
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    assert oct(project.keys.stat().st_mode & 0o777) == oct(0o700)
    assert result.out.splitlines()[1] == "no expired keys to delete"


# ---------------------------------------------------------------- hash-secret


@pytest.mark.parametrize("stdin", ["s3cret-value\n", "s3cret-value", "s3cret-value\r\n"], ids=["lf", "no-eol", "crlf"])
def test_hash_secret_prints_an_argon2id_hash_that_verifies(tmp_path: Path, stdin: str) -> None:
    result = tollbooth(tmp_path, "hash-secret", stdin=stdin)
    assert result.code == 0, result.err
    hashed = result.out.strip()
    assert hashed.startswith("$argon2id$")
    assert PasswordHasher().verify(hashed, "s3cret-value")
    assert "s3cret-value" not in result.out + result.err


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        ("", "error: no secret on standard input"),
        ("\n", "error: no secret on standard input"),
        ("first\nsecond\n", "error: the input has more than one line"),
    ],
    ids=["empty", "empty-line", "two-lines"],
)
def test_hash_secret_refuses_input_that_is_not_one_secret(tmp_path: Path, stdin: str, message: str) -> None:
    result = tollbooth(tmp_path, "hash-secret", stdin=stdin)
    assert result.code == 1
    assert result.out == ""
    assert result.err.startswith(message)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs a pseudo-terminal")
def test_hash_secret_on_a_terminal_prompts_without_echo(tmp_path: Path) -> None:
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a terminal; it must never return into pytest
        try:
            os.chdir(tmp_path)
            os.execv(sys.executable, [sys.executable, "-m", "gateway", "hash-secret"])  # noqa: S606
        finally:
            os._exit(127)
    seen = b""

    def read_until(marker: bytes) -> None:
        nonlocal seen
        deadline = time.monotonic() + 30
        while marker not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    seen += os.read(fd, 4096)
                except OSError:  # the child closed the terminal
                    return

    try:
        read_until(b"secret (not echoed): ")
        os.write(fd, b"typed-secret\n")
        read_until(b"$argon2id$")
        read_until(b"\n")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
    text = seen.decode()
    assert "typed-secret" not in text
    hashed = text.split("$argon2id$", 1)[1].split()[0]
    assert PasswordHasher().verify("$argon2id$" + hashed, "typed-secret")


# ---------------------------------------------------------------- explain

EXPLAIN_CASES = [
    # id: (arguments after the config, exit code, start of the first line of the text output, reason)
    pytest.param(
        ["GET", "/v1/customers/42", "--scope", "crm.read"], 0, "ALLOW 200 GET /v1/customers/42", "allowed", id="allow"
    ),
    pytest.param(
        ["POST", "/v1/customers", "--scope", "crm.read"],
        1,
        "DENY 403 POST /v1/customers",
        "insufficient_scope",
        id="insufficient-scope",
    ),
    pytest.param(
        ["DELETE", "/v1/customers/42", "--scope", "crm.read crm.write"],
        1,
        "DENY 403 DELETE /v1/customers/42",
        "no_matching_route",
        id="no-route-for-method",
    ),
    pytest.param(
        ["GET", "/v2/unknown", "--scope", "crm.read"],
        1,
        "DENY 403 GET /v2/unknown",
        "no_matching_route",
        id="no-route-for-path",
    ),
    pytest.param(
        ["GET", "/v1/customers/%2e%2e/admin", "--scope", "crm.read"],
        1,
        "DENY 400 GET /v1/customers/%2e%2e/admin",
        "path_rejected",
        id="400-encoded-dot-segment",
    ),
    pytest.param(
        ["GET", "/v1//customers", "--scope", "crm.read"],
        1,
        "DENY 400 GET /v1//customers",
        "path_rejected",
        id="400-empty-segment",
    ),
    pytest.param(["GET", "/v1/customers/42"], 1, "DENY 401 GET /v1/customers/42", "missing_token", id="no-token"),
    pytest.param(["GET", "/status"], 0, "ALLOW 200 GET /status", "public", id="public-without-token"),
    pytest.param(
        ["GET", "/v1/on-behalf", "--scope", "crm.read"],
        1,
        "DENY 403 GET /v1/on-behalf",
        "delegation_required",
        id="delegation-required-direct",
    ),
    pytest.param(
        ["GET", "/v1/on-behalf", "--scope", "crm.read", "--subject", "user:alice", "--act", "bot"],
        0,
        "ALLOW 200",
        "allowed",
        id="delegation-required-with-act",
    ),
    pytest.param(
        ["GET", "/v1/on-behalf", "--scope", "crm.read", "--subject", "user:alice"],
        0,
        "ALLOW 200",
        "allowed",
        id="delegation-required-subject-implies-act",
    ),
    pytest.param(
        ["get", "/v1/customers/42?expand=orders", "--scope", "crm.read"],
        0,
        "ALLOW 200 GET /v1/customers/42",
        "allowed",
        id="lower-case-method-and-query",
    ),
    pytest.param(
        ["GET", "https://gw.example/v1/customers/42?x=1", "--scope", "crm.read"],
        0,
        "ALLOW 200 GET /v1/customers/42",
        "allowed",
        id="full-url",
    ),
    pytest.param(
        ["GET", "/.well-known/oauth-protected-resource"],
        0,
        "ALLOW 200",
        "protected_resource_metadata",
        id="rfc9728-metadata",
    ),
]


@pytest.mark.parametrize(("args", "code", "first_line", "reason"), EXPLAIN_CASES)
def test_explain_text(
    project: Project, cli: Callable[..., Result], args: list[str], code: int, first_line: str, reason: str
) -> None:
    result = cli("explain", "--config", str(project.config), *args)
    assert result.code == code, result.err
    assert result.out.splitlines()[0].startswith(first_line)
    assert f"  reason: {reason}: " in result.out
    assert result.err == ""


@pytest.mark.parametrize(("args", "code", "first_line", "reason"), EXPLAIN_CASES)
def test_explain_json(
    project: Project, cli: Callable[..., Result], args: list[str], code: int, first_line: str, reason: str
) -> None:
    result = cli("explain", "--config", str(project.config), "--json", *args)
    assert result.code == code, result.err
    decision = json.loads(result.out)
    assert set(decision) == {
        "method",
        "path",
        "allow",
        "status",
        "error",
        "reason",
        "description",
        "route",
        "upstream",
        "required_scopes",
        "principal",
        "notes",
    }
    assert decision["reason"] == reason
    assert decision["allow"] is (code == 0)
    assert first_line.startswith(f"{'ALLOW' if code == 0 else 'DENY'} {decision['status']}")
    assert (decision["error"] is None) is decision["allow"]


def test_explain_allow_names_the_rule_upstream_and_caller(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("explain", "--config", str(project.config), "GET", "/v1/customers/42", "--scope", "crm.read")
    assert result.out.splitlines() == [
        "ALLOW 200 GET /v1/customers/42",
        "  route:  get-customer -> upstream crm",
        "  reason: allowed: allowed by route 'get-customer'",
        "  needs:  crm.read",
        "  caller: agent explain, subject explain; scopes: crm.read",
    ]


def test_explain_insufficient_scope_says_what_is_missing(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("explain", "--config", str(project.config), "--json", "POST", "/v1/customers", "--scope", "crm.read")
    decision = json.loads(result.out)
    assert decision["status"] == 403
    assert decision["error"] == "insufficient_scope"
    assert (decision["route"], decision["upstream"]) == ("create-customer", "crm")
    assert decision["required_scopes"] == ["crm.write"]
    assert decision["description"] == "route 'create-customer' requires scopes crm.write; missing crm.write"


def test_explain_a_rejected_path_is_the_proxys_400(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("explain", "--config", str(project.config), "--json", "GET", "/a/%2F/b", "--scope", "crm.read")
    decision = json.loads(result.out)
    assert (decision["status"], decision["error"], decision["route"]) == (400, "invalid_request", None)
    assert decision["description"] == "encoded slash (%2F) in path"


def test_explain_without_a_caller_says_how_to_give_one(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("explain", "--config", str(project.config), "GET", "/v1/customers/42")
    assert "  note:   explained as a request without a token; give --token, or --scope/--agent" in result.out


def test_explain_with_an_agent_and_no_scopes_assumes_a_caller_holding_none(
    project: Project, cli: Callable[..., Result]
) -> None:
    result = cli("explain", "--config", str(project.config), "--json", "GET", "/v1/customers/42", "--agent", "reader")
    decision = json.loads(result.out)
    assert decision["reason"] == "insufficient_scope"
    assert decision["principal"]["agent"] == "reader"


def test_explain_notes_scopes_the_agent_can_never_get(project: Project, cli: Callable[..., Result]) -> None:
    args = ["POST", "/v1/customers", "--agent", "reader", "--scope", "crm.write"]
    decision = json.loads(cli("explain", "--config", str(project.config), "--json", *args).out)
    assert decision["allow"] is True
    assert decision["notes"] == ["agent 'reader' can never be issued crm.write (agents.reader.scopes)"]


def mint(project: Project, cli: Callable[..., Result], *args: str) -> str:
    result = cli("token", "--config", str(project.config), "--agent", "billing-bot", *args)
    assert result.code == 0, result.err
    return result.out.strip()


def test_explain_with_a_token_from_token(project: Project, cli: Callable[..., Result]) -> None:
    token = mint(project, cli, "--scope", "crm.read")
    allowed = cli("explain", "--config", str(project.config), "--json", "GET", "/v1/customers/7", "--token", token)
    assert allowed.code == 0, allowed.err
    decision = json.loads(allowed.out)
    assert decision["reason"] == "allowed"
    principal = decision["principal"]
    assert (principal["agent"], principal["subject"], principal["scopes"]) == (
        "billing-bot",
        "billing-bot",
        ["crm.read"],
    )
    assert principal["jti"] == claims_of(token)["jti"]

    denied = cli("explain", "--config", str(project.config), "POST", "/v1/customers", "--token", token)
    assert denied.code == 1
    assert denied.out.splitlines()[0] == "DENY 403 POST /v1/customers"
    assert "insufficient_scope" in denied.out


def test_explain_with_a_delegated_token(project: Project, cli: Callable[..., Result]) -> None:
    token = mint(project, cli, "--scope", "crm.read", "--subject", "user:alice")
    result = cli("explain", "--config", str(project.config), "GET", "/v1/on-behalf", "--token", token)
    assert result.code == 0, result.out
    assert "  caller: agent billing-bot, subject user:alice, acting through billing-bot; scopes: crm.read" in result.out


def test_explain_with_a_tampered_token_is_invalid_token(project: Project, cli: Callable[..., Result]) -> None:
    header, payload, signature = mint(project, cli, "--scope", "crm.read").split(".")
    forged = f"{header}.{payload}.{signature[:-4]}AAAA"
    result = cli("explain", "--config", str(project.config), "--json", "GET", "/v1/customers/7", "--token", forged)
    assert result.code == 1
    decision = json.loads(result.out)
    assert (decision["status"], decision["error"]) == (401, "invalid_token")


def test_explain_with_a_token_when_there_are_no_keys(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("explain", "--config", str(project.config), "GET", "/v1/customers/7", "--token", "a.b.c")
    assert result.code == 2
    assert result.err == (
        f"error: cannot verify --token: {project.keys}: no such directory; "
        "create a key with `tollbooth keys generate`\n"
    )


def test_explain_token_and_assumed_scopes_do_not_mix(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("explain", "--config", str(project.config), "GET", "/x", "--token", "a.b.c", "--scope", "crm.read")
    assert result.code == 2
    assert result.err == "error: --token speaks for itself: leave out --scope, --agent, --subject and --act\n"


def test_explain_on_an_invalid_config_exits_2(project: Project, cli: Callable[..., Result]) -> None:
    project.write_routes("routes:\n  - name: r\n    pth: /x\n")
    result = cli("explain", "--config", str(project.config), "GET", "/x", "--scope", "crm.read")
    assert result.code == 2
    assert result.err.startswith(f'error: {project.routes}: routes[0] (r): unknown key "pth" (did you mean "path"?)')


def test_explain_in_a_subprocess(project: Project) -> None:
    result = tollbooth(project.dir, "explain", "-c", "tollbooth.yaml", "GET", "/v1/customers/1", "--scope", "crm.read")
    assert result.code == 0, result.err
    assert result.out.startswith("ALLOW 200 GET /v1/customers/1\n")


# ---------------------------------------------------------------- serve (arguments only: nothing is started)


def test_serve_refuses_zero_workers(project: Project, cli: Callable[..., Result]) -> None:
    result = cli("serve", "--config", str(project.config), "--workers", "0")
    assert result.code == 2
    assert result.err == "error: --workers 0: give 1 or more processes\n"


def test_serve_on_an_invalid_config_exits_1_without_starting(project: Project) -> None:
    project.write_routes("routes:\n  - name: r\n    path: /x\n    methods: [TRACE]\n")
    result = tollbooth(project.dir, "serve", "--config", "tollbooth.yaml", "--log-format", "json")
    assert result.code == 1
    assert f"error: {project.routes}: routes[0] (r): methods: TRACE is never proxied" in result.err


def test_serve_with_a_bad_key_file_says_which_and_why_without_a_traceback(project: Project) -> None:
    project.keys.mkdir(mode=0o700)
    bad = project.keys / "20250131T120000.123456Z-ES256.pem"
    bad.write_text("not a key")
    bad.chmod(0o600)
    result = tollbooth(project.dir, "serve", "--config", str(project.config))
    assert result.code == 1
    assert result.err.strip().splitlines()[-1].startswith(f"error: {bad}: not an unencrypted PEM private key")
    assert "Traceback" not in result.err


def test_keys_rotate_activate_in_publishes_now_and_says_when_it_signs(project: Project) -> None:
    first = tollbooth(project.dir, "keys", "generate", "--config", str(project.config))
    assert first.code == 0, first.err
    result = tollbooth(project.dir, "keys", "rotate", "--activate-in", "2m", "--config", str(project.config))
    assert result.code == 0, result.err
    assert "published now, signs from " in result.out
    listing = tollbooth(project.dir, "keys", "list", "--config", str(project.config)).out.splitlines()
    assert "pending, signs from " in listing[0] and listing[1].startswith("* ") and listing[1].endswith("active")
    for nonsense in ("soon", "8d", "9999999999999999999999999s"):
        bad = tollbooth(project.dir, "keys", "rotate", "--activate-in", nonsense, "--config", str(project.config))
        assert bad.code == 2 and "--activate-in" in bad.err and "Traceback" not in bad.err
