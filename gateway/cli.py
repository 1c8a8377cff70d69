"""The `tollbooth` command: argument parsing only; each verb calls into the package."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from gateway import __version__
from gateway.config import Config, ConfigError, LoadedConfig, RouteConfig, config_schema, load_config, parse_duration
from gateway.redis.url import redacted
from gateway.tokens.jwk import SIGNING_ALGORITHMS

DEFAULT_CONFIG = os.environ.get("TOLLBOOTH_CONFIG", "config/example.yaml")
MAX_DEV_TOKEN_TTL = 86400.0


def _fail(message: str, code: int = 1) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _load(path: str, *, exit_code: int = 1) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(exit_code) from None


def _duration(text: str, what: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        _fail(f"{what}: {exc}", 2)


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-c",
        default=DEFAULT_CONFIG,
        help=f"the YAML config file (default: {DEFAULT_CONFIG}; env TOLLBOOTH_CONFIG)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.logs import setup_logging
    from gateway.serve import LISTENERS, run_gateway, run_workers

    if args.workers < 1:
        _fail(f"--workers {args.workers}: give 1 or more processes", 2)
    setup_logging(args.log_level, args.log_format)
    loaded = _load(args.config)
    if args.workers > 1:
        argv = ["serve", "--config", args.config, "--log-level", args.log_level, "--log-format", args.log_format]
        for name in args.only or []:
            argv += ["--only", name]
        return run_workers(argv, args.workers)
    import uvloop

    from gateway.issuer.keystore import KeyStoreError

    reuse_port = os.environ.get("TOLLBOOTH_REUSE_PORT") == "1"
    try:
        uvloop.run(run_gateway(loaded, args.only or LISTENERS, reuse_port=reuse_port))
    except KeyStoreError as exc:  # the message names the file and what to do; a traceback would bury it
        _fail(str(exc))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.proxy.authorize import route_warnings

    loaded = _load(args.config)
    config = loaded.config
    warnings = route_warnings(config)
    if args.mcp_coverage:
        warnings += _mcp_coverage(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if warnings and args.strict:
        print(f"error: {len(warnings)} warning(s), and --strict treats warnings as errors", file=sys.stderr)
        return 1
    files = ", ".join(str(p) for p in loaded.sources)
    counts = [_count(len(config.routes), "route"), _count(len(config.upstreams), "upstream")]
    counts.append(_count(len(config.agents), "agent"))
    print(f"ok: {files}: {', '.join(counts)}")
    return 0


def _mcp_target(config: Config, route: RouteConfig) -> tuple[str, dict[str, str]]:
    """The URL and headers (the upstream's own credentials) the gateway reaches an MCP route's server with."""
    if "{" in route.path:
        _fail(f"route {route.name!r}: its path {route.path} has parameters; an MCP endpoint is one literal path")
    upstream = config.upstreams[config.upstream_for(route)]
    return upstream.url.rstrip("/") + route.path, dict(upstream.headers)


def _mcp_coverage(config: Config) -> list[str]:
    """Warnings for each mcp: route: what its server offers that no rule covers, and rules that match nothing."""
    from gateway.mcp.rules import McpRules
    from gateway.mcp.survey import SurveyError, coverage, survey

    warnings: list[str] = []
    routes = [route for route in config.routes if route.mcp is not None]
    if not routes:
        print("note: --mcp-coverage: no route has an mcp: block", file=sys.stderr)
    for route in routes:
        assert route.mcp is not None
        url, headers = _mcp_target(config, route)
        try:
            offer = asyncio.run(survey(url, headers))
        except SurveyError as exc:
            _fail(f"route {route.name!r}: {exc}")
        uncovered, unused = coverage(McpRules.from_config(route.mcp), offer)
        warnings += [f"route {route.name!r}: {what} is offered but no rule covers it (denied)" for what in uncovered]
        warnings += [f"route {route.name!r}: rule {rule} matches nothing the MCP server offers" for rule in unused]
    return warnings


def cmd_mcp_draft(args: argparse.Namespace) -> int:
    from gateway.mcp.survey import SurveyError, draft_rules, survey

    config = _load(args.config).config
    route = next((r for r in config.routes if r.name == args.route), None)
    if route is None:
        _fail(f"no route named {args.route!r}; routes: {', '.join(r.name for r in config.routes) or 'none'}")
    url, headers = _mcp_target(config, route)
    try:
        offer = asyncio.run(survey(url, headers))
    except SurveyError as exc:
        _fail(str(exc), 2)
    prefix = args.scope_prefix or config.upstream_for(route)
    block = draft_rules(offer, prefix)
    print(f"# A draft mcp: block for route {route.name}, from what {url} offers: {len(offer.tools)} tools,")
    print(f"# {len(offer.resources) + len(offer.templates)} resources and templates, {len(offer.prompts)} prompts.")
    print("# Tool annotations chose the scopes (readOnlyHint: read, destructiveHint: admin, else write): review them.")
    print(yaml.safe_dump({"mcp": block}, sort_keys=False), end="")
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.explain import explain
    from gateway.issuer.keystore import KeyStoreError

    if args.token and (args.scope or args.agent or args.subject or args.act):
        _fail("--token speaks for itself: leave out --scope, --agent, --subject and --act", 2)
    loaded = _load(args.config, exit_code=2)
    try:
        result = asyncio.run(
            explain(
                loaded.config,
                method=args.method,
                path=args.path,
                token=args.token,
                scopes=args.scope,
                agent=args.agent,
                subject=args.subject,
                delegation=args.act,
                mcp=_mcp_call(args),
            )
        )
    except KeyStoreError as exc:
        _fail(f"cannot verify --token: {exc}", 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_explain_text(result))
    return 0 if result["allow"] else 1


def _mcp_call(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]] | None:
    """(JSON-RPC method, name or URI, arguments) from explain's --mcp-* options, or None."""
    try:
        arguments = json.loads(args.mcp_arguments)
    except json.JSONDecodeError as exc:
        _fail(f"--mcp-arguments is not JSON: {exc}", 2)
    if not isinstance(arguments, dict):
        _fail("--mcp-arguments must be a JSON object", 2)
    for method, value in (
        ("tools/call", args.mcp_tool),
        ("resources/read", args.mcp_resource),
        ("prompts/get", args.mcp_prompt),
    ):
        if value is not None:
            return method, value, arguments
    return None


def _explain_text(result: dict[str, Any]) -> str:
    verdict = "ALLOW" if result["allow"] else "DENY"
    lines = [f"{verdict} {result['status']} {result['method']} {result['path']}"]
    route = result["route"] or "(none)"
    if result["upstream"]:
        route = f"{route} -> upstream {result['upstream']}"
    lines.append(f"  route:  {route}")
    lines.append(f"  reason: {result['reason']}: {result['description']}")
    if result["required_scopes"]:
        lines.append(f"  needs:  {' '.join(result['required_scopes'])}")
    principal = result["principal"]
    if isinstance(principal, dict):
        caller = f"agent {principal['agent']}, subject {principal['subject']}"
        if principal["delegation"]:
            caller += f", acting through {', '.join(principal['delegation'])}"
        caller += f"; scopes: {' '.join(principal['scopes']) or '(none)'}"
        lines.append(f"  caller: {caller}")
    if "mcp" in result:
        call = result["mcp"]
        named = call.get("name", call.get("uri"))
        lines.append(f"  mcp:    {call['method']} {named} -> {call['rule'] or 'no rule (default deny)'}")
    for note in result["notes"]:
        lines.append(f"  note:   {note}")
    return "\n".join(lines)


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.issuer.keystore import KeyStore, KeyStoreError
    from gateway.tokens.access_token import act_claim, mint_access_token

    config = _load(args.config).config
    scopes = list(dict.fromkeys(s for chunk in args.scope for s in chunk.split()))
    agent = config.agents.get(args.agent)
    if agent is None:
        known = ", ".join(config.agents) or "none; add one under `agents:`"
        _fail(f"{args.config}: no agent {args.agent!r} under `agents:` (known: {known})")
    outside = [s for s in scopes if s not in agent.scopes]
    if outside:
        _fail(
            f"agent {args.agent!r} may not hold {' '.join(outside)} "
            f"(agents.{args.agent}.scopes allows: {' '.join(agent.scopes) or 'nothing'})"
        )
    ttl = config.issuer.access_token_ttl if args.ttl is None else _duration(args.ttl, "--ttl")
    if ttl > MAX_DEV_TOKEN_TTL:
        # `tollbooth revoke --jti` keeps a revocation a day when it cannot know the token's expiry.
        _fail(f"--ttl {args.ttl}: development tokens live at most {MAX_DEV_TOKEN_TTL / 3600:g}h")
    if agent.max_token_ttl is not None:
        if args.ttl is not None and ttl > agent.max_token_ttl:
            _fail(f"--ttl {args.ttl}: agent {args.agent!r} may hold tokens for at most {agent.max_token_ttl:g}s")
        ttl = min(ttl, agent.max_token_ttl)
    actors = list(args.act or [])
    if args.subject and args.subject != args.agent and not actors:
        actors = [args.agent]  # DESIGN.md: a delegated token names the agent in act.sub
    act = act_claim(actors)
    try:
        keys = KeyStore.load(
            config.issuer.keys_dir, config.issuer.algorithm, token_lifetime=KeyStore.token_lifetime(config)
        )
        token, claims = mint_access_token(
            keys.active,
            issuer=config.issuer.url,
            audience=config.proxy.public_url,
            subject=args.subject or args.agent,
            client_id=args.agent,
            scopes=scopes,
            ttl=ttl,
            act=act,
        )
    except (KeyStoreError, ValueError) as exc:
        _fail(str(exc))
    if args.json:
        response = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": claims["exp"] - claims["iat"],
            "scope": claims.get("scope", ""),
            "claims": claims,
        }
        print(json.dumps(response, indent=2))
    else:
        print(token)
    return 0


def cmd_keys_agent(args: argparse.Namespace) -> int:
    from gateway.client import TollboothError, generate_agent_key
    from gateway.client.agent_keys import default_key_file

    try:
        key_file = Path(args.out) if args.out else default_key_file(args.name)
        print(generate_agent_key(args.name, key_file, args.algorithm, overwrite=args.force), end="")
    except TollboothError as exc:
        _fail(str(exc))
    print(
        f"wrote the private key to {key_file} (mode 0600): keep it with the agent, never in the gateway config",
        file=sys.stderr,
    )
    return 0


MAX_ACTIVATE_IN = 7 * 86400


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.issuer.keystore import KeyStore, KeyStoreError, generate_key, prune_keys, rotate_keys, utc_text

    config = _load(args.config).config
    keys_dir = args.keys_dir or config.issuer.keys_dir
    lifetime = KeyStore.token_lifetime(config)
    algorithm = getattr(args, "algorithm", None) or config.issuer.algorithm  # only generate and rotate take one
    delay = getattr(args, "activate_in", None)
    activate_in = 0.0 if delay is None else _duration(delay, "--activate-in")
    if activate_in > MAX_ACTIVATE_IN:
        # A key dated far ahead is trusted at once but would sign only then: almost surely a typo in the unit.
        _fail(f"--activate-in {delay}: at most 7d; the key is published at once and must start signing soon", 2)
    role = (
        (
            "now the active signing key"
            if not activate_in
            else f"published now, signs from {utc_text(time.time() + activate_in)}"
        )
        if algorithm == config.issuer.algorithm
        else (f"signs only once issuer.algorithm is {algorithm}")
    )
    try:
        if args.keys_command == "list":
            store = KeyStore.load(keys_dir, config.issuer.algorithm, generate_if_empty=False, token_lifetime=lifetime)
        elif args.keys_command == "prune":
            key, pruned = None, prune_keys(keys_dir, config.issuer.algorithm, lifetime, dry_run=args.dry_run)
        elif args.keys_command == "rotate":
            rotation = rotate_keys(
                keys_dir,
                config.issuer.algorithm,
                lifetime,
                new_algorithm=algorithm,
                activate_in=activate_in,
                dry_run=args.dry_run,
            )
            key, pruned = rotation.generated, rotation.pruned
        else:
            key, pruned = generate_key(keys_dir, algorithm, now=time.time() + activate_in), ()
    except (KeyStoreError, OSError) as exc:
        _fail(str(exc))
    if args.keys_command != "list":
        if key is not None:
            print(
                f"generated {key.algorithm} key {key.kid} in {keys_dir} "
                f"({role}; older keys stay published until the tokens they signed expire)"
            )
        elif args.keys_command == "rotate":
            print(f"would generate a new {algorithm} key in {keys_dir}")
        for status in pruned:
            assert status.published_until is not None  # prunable keys are expired: their window is known
            print(
                f"{'would delete' if args.dry_run else 'deleted'} {status.key.path} "
                f"(kid {status.key.kid}, {status.key.algorithm}, published until {utc_text(status.published_until)})"
            )
        if args.keys_command != "generate" and not pruned:
            print("no expired keys to delete")
        return 0
    rows = [
        {
            "kid": status.key.kid,
            "algorithm": status.key.algorithm,
            "created": utc_text(status.key.created_at),
            "active": status.state == "active",
            "state": status.state,
            "retired": None if status.retired_at is None else utc_text(status.retired_at),
            "published_until": None if status.published_until is None else utc_text(status.published_until),
            "published": status.published,
            "prunable": status.prunable,
            "description": status.describe(),
        }
        for status in store.statuses
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            marker = "*" if row["active"] else " "
            print(f"{marker} {row['kid']}  {row['algorithm']:<6} {row['created']}  {row['description']}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    import time

    from gateway.state import StateUnavailable, open_state

    config = _load(args.config).config
    now = time.time()
    # A jti alone does not say when its token expires: keep the entry as long as any token of ours can live
    # (`tollbooth token --ttl` may mint long-lived development tokens, hence the day).
    keep_until = now + max(config.issuer.access_token_ttl, MAX_DEV_TOKEN_TTL) + config.proxy.clock_leeway

    journal = Path(config.issuer.revocations_file).resolve()
    if not config.redis.url and not journal.exists():
        # Relative paths are read from the working directory: from elsewhere this would revoke nothing anyone reads.
        _fail(
            f"nothing revoked: no revocations file at {journal}, so no gateway reads it. Run this where the gateway "
            "runs (issuer.revocations_file is relative to the working directory), or set it to an absolute path."
        )

    async def revoke() -> str:
        state = open_state(config.redis.url, revocations_file=journal)
        try:
            if args.jti:
                await state.revoke_jti(args.jti, keep_until)
                return f"revoked token {args.jti}"
            if args.agent:
                await state.revoke_agent_before(args.agent, now)
                return f"revoked every token issued to agent {args.agent} until now, and its refresh tokens"
            await state.revoke_subject_before(args.subject, now)
            return f"revoked every token issued for subject {args.subject} until now, and its refresh tokens"
        finally:
            await state.aclose()

    try:
        done = asyncio.run(revoke())
    except StateUnavailable as exc:
        _fail(f"nothing revoked: {exc}")
    where = f"Redis at {redacted(config.redis.url)}" if config.redis.url else str(journal)
    print(f"{done} (recorded in {where}; running gateways enforce it within a second)")
    problem = _audit_revocation(config, args, now)
    if problem:
        print(f"warning: revoked, but its audit event was not written: {problem}", file=sys.stderr)
        return 1
    return 0


def _audit_revocation(config: Config, args: argparse.Namespace, now: float) -> str | None:
    """An operator's revocation is a token.revoked event like an agent's (RFC 7009) one; None once it is written,
    else why not."""
    from gateway.audit.events import AuditEvent
    from gateway.audit.record import record_event
    from gateway.redis.connect import REDIS_FAILURES

    what = "jti" if args.jti else "agent" if args.agent else "subject"
    event = AuditEvent(
        event="token.revoked",
        ts=now,
        decision="allow",
        reason=f"operator_revoke_{what}",
        agent=args.agent or "",
        subject=args.subject or "",
        jti=args.jti or "",
    )
    try:
        record_event(config.redis.url, config.audit, event)
    except (*REDIS_FAILURES, OSError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


def cmd_block(args: argparse.Namespace) -> int:
    """`tollbooth block` / `unblock`: through the admin API (--admin URL) or straight into the shared state."""
    on = args.func is cmd_block
    if args.admin:
        return _block_through_api(args, on)
    from gateway.audit.events import AuditEvent
    from gateway.audit.record import record_event
    from gateway.redis.connect import REDIS_FAILURES
    from gateway.state import StateUnavailable, open_state
    from gateway.state.revocations import block_record

    config = _load(args.config).config
    journal = Path(config.issuer.revocations_file).resolve()

    async def run() -> list[dict[str, object]]:
        state = open_state(config.redis.url, revocations_file=journal)
        try:
            if args.list:
                await state.start()  # loads what is in force
                return state.revocations.blocks()
            kind, party = ("agent", args.agent) if args.agent else ("subject", args.subject)
            record = block_record(kind, party, on=on, reason=args.reason or "", by="cli", since=time.time())
            await state.set_block(record)
            return [record]
        finally:
            await state.aclose()

    try:
        records = asyncio.run(run())
    except StateUnavailable as exc:
        _fail(f"nothing changed: {exc}")
    if args.list:
        _print_blocks(records)
        return 0
    record = records[0]
    print(f"{'blocked' if on else 'unblocked'} {record['block']} {record['id']} (every gateway within a second)")
    event = AuditEvent(
        event="agent.blocked" if on else "agent.unblocked",
        ts=float(str(record["since"])),
        decision="allow",
        by="cli",
        reason=args.reason or "",
        agent=str(record["id"]) if record["block"] == "agent" else "",
        subject=str(record["id"]) if record["block"] == "subject" else "",
    )
    try:
        record_event(config.redis.url, config.audit, event)
    except (*REDIS_FAILURES, OSError) as exc:
        print(f"warning: done, but its audit event was not written: {exc}", file=sys.stderr)
        return 1
    return 0


def _block_through_api(args: argparse.Namespace, on: bool) -> int:
    import urllib.parse

    import httpx2

    token = os.environ.get("TOLLBOOTH_ADMIN_TOKEN", "")
    if not token:
        _fail("set TOLLBOOTH_ADMIN_TOKEN to the admin token (admin.token_hash holds its hash)")
    base = args.admin.rstrip("/") + "/api/blocks"
    headers = {"authorization": f"Bearer {token}"}
    kind, party = ("agent", args.agent) if args.agent else ("subject", args.subject)
    try:
        if args.list:
            answer = httpx2.get(base, headers=headers)
        elif on:
            answer = httpx2.post(base, headers=headers, json={kind: party, "reason": args.reason or ""})
        else:
            answer = httpx2.delete(f"{base}/{kind}/{urllib.parse.quote(party, safe='')}", headers=headers)
    except httpx2.HTTPError as exc:
        _fail(f"the admin API at {args.admin} cannot be reached: {exc}")
    if answer.status_code >= 400:
        _fail(f"the admin API refused ({answer.status_code}): {answer.text}")
    if args.list:
        _print_blocks(answer.json()["blocks"])
    else:
        print(f"{'blocked' if on else 'unblocked'} {kind} {party} (every gateway within a second)")
    return 0


def _print_blocks(records: list[dict[str, object]]) -> None:
    if not records:
        print("no blocks in force")
    for record in records:
        when = datetime.datetime.fromtimestamp(float(str(record["since"])), datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        who, why = record.get("by") or "?", record.get("reason") or ""
        print(f"{record['block']:8} {record['id']}  since {when} by {who}: {why}")


def cmd_approvals(args: argparse.Namespace) -> int:
    """`tollbooth approvals list|show ID|approve ID|deny ID`, through a gateway's admin API."""
    import httpx2

    token = os.environ.get("TOLLBOOTH_ADMIN_TOKEN", "")
    if not token:
        _fail("set TOLLBOOTH_ADMIN_TOKEN to the admin token (admin.token_hash holds its hash)")
    if args.action != "list" and not args.id:
        _fail(f"approvals {args.action} needs the approval id (tollbooth approvals list shows them)")
    base = args.admin.rstrip("/") + "/api/approvals"
    headers = {"authorization": f"Bearer {token}"}
    try:
        if args.action == "list":
            answer = httpx2.get(base, headers=headers)
        elif args.action == "show":
            answer = httpx2.get(f"{base}/{args.id}", headers=headers)
        else:
            answer = httpx2.post(f"{base}/{args.id}/{args.action}", headers=headers, json={"reason": args.reason or ""})
    except httpx2.HTTPError as exc:
        _fail(f"the admin API at {args.admin} cannot be reached: {exc}")
    if answer.status_code >= 400:
        _fail(f"the admin API refused ({answer.status_code}): {answer.text}")
    if args.action != "list":
        print(json.dumps(answer.json(), indent=2))
        return 0
    pending = answer.json()["approvals"]
    if not pending:
        print("no approvals pending")
    for approval in pending:
        call = approval["call"]
        who = f"{call['agent']} for {call['subject']}"
        print(f"{approval['id']}  {who}: {call['method']} {call['path']} ({call['route']} {call['rule']})")
    return 0


def cmd_unblock(args: argparse.Namespace) -> int:
    return cmd_block(args)


def cmd_audit_tail(args: argparse.Namespace) -> int:
    import time

    import redis

    from gateway.audit.tail import TailFilter, open_source, tail

    if args.lines is not None and args.lines < 1:
        _fail(f"--lines {args.lines}: give 1 or more", 2)
    config = _load(args.config).config
    since = time.time() - _duration(args.since, "--since") if args.since else None
    flt = TailFilter(agent=args.agent, subject=args.subject, decision=args.decision, since=since)
    # Like tail(1): the last 20 by default; with --since, everything since then.
    limit = args.lines if args.lines is not None else (None if since is not None else 20)
    as_json = args.json or not sys.stdout.isatty()
    try:
        tail(open_source(config), flt, sys.stdout, limit=limit, follow=args.follow, as_json=as_json)
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:  # the latter: no Cluster node answers
        _fail(f"cannot read the audit stream {config.audit.stream!r} (redis.url): {exc}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
    return 0


def cmd_hash_secret(args: argparse.Namespace) -> int:
    from argon2 import PasswordHasher

    if sys.stdin.isatty():
        import getpass

        secret = getpass.getpass("secret (not echoed): ")
        rest = ""
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
        rest = sys.stdin.read()
    if not secret:
        _fail(
            "no secret on standard input; e.g. `head -c 32 /dev/urandom | base64 | tee secret.txt | "
            "tollbooth hash-secret`"
        )
    if rest.strip():
        # Hashing only the first line would make a secret that never matches what the agent sends.
        _fail("the input has more than one line; give the secret alone, on one line")
    print(PasswordHasher().hash(secret))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import prepare_demo_secret, run_demo
    from gateway.logs import setup_logging

    setup_logging(args.log_level, "text")
    prepare_demo_secret(os.environ)
    loaded = _load(args.config)
    import uvloop

    uvloop.run(run_demo(loaded, config_path=args.config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollbooth",
        description="An access gateway that lets AI agents reach existing HTTP APIs with short-lived, scoped tokens.",
    )
    parser.add_argument("--version", action="version", version=f"tollbooth {__version__}")
    verbs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = verbs.add_parser(
        "serve",
        help="run the proxy, token service and admin listeners",
        description="Run the gateway. Stops gracefully on SIGTERM.",
    )
    _add_config(serve)
    serve.add_argument(
        "--only",
        action="append",
        choices=["proxy", "issuer", "admin"],
        help="run only this listener (repeatable); default: all three",
    )
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the ports (default 1)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "text"],
        help="auto: text on a terminal, JSON lines otherwise",
    )
    serve.set_defaults(func=cmd_serve)

    check = verbs.add_parser(
        "check",
        help="validate a config and report shadowed or duplicate routes",
        description="Validate a config. Exit 1 naming file, rule and field when it is invalid.",
    )
    _add_config(check)
    check.add_argument("--strict", action="store_true", help="also exit 1 when there are warnings")
    check.add_argument(
        "--mcp-coverage",
        action="store_true",
        help="also connect to each mcp: route's server (with the upstream's credentials) and warn about tools, "
        "resources and prompts no rule covers and rules that match nothing",
    )
    check.set_defaults(func=cmd_check)

    explain = verbs.add_parser(
        "explain",
        help="would this request be allowed, and by which rule?",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Explain the proxy's decision for METHOD PATH, without sending anything upstream.

The caller is a real token (--token, verified as the proxy would, except that
revocations are not consulted) or one assumed from --scope/--agent/--subject/--act.
With none of these the request is explained as one without a token (401).
PATH may carry a query string or be a full URL; only the path is matched.""",
        epilog="""\
exit status (like grep, so scripts can tell a denial from a mistake):
  0  the proxy would forward the request (or answer it itself, for RFC 9728 metadata)
  1  the proxy would refuse it (400, 401 or 403; the reason is printed)
  2  explain could not answer: bad arguments, an invalid config, unreadable keys

--json prints {method, path, allow, status, error, reason, description, route,
upstream, required_scopes, principal, notes}; `error` is what the agent would see.""",
    )
    _add_config(explain)
    explain.add_argument("method", help="HTTP method, e.g. GET (case-insensitive here)")
    explain.add_argument("path", help="request path as sent on the wire, e.g. /v1/customers/42 (still encoded)")
    explain.add_argument("--token", help="a bearer token to verify and use (e.g. from `tollbooth token`)")
    explain.add_argument(
        "--scope", action="append", default=[], help="a scope the caller holds (repeatable or space-separated)"
    )
    explain.add_argument("--agent", help="the agent (client_id) to assume (default: a nameless one)")
    explain.add_argument(
        "--subject",
        help="the subject the caller acts for (default: the agent itself); "
        "the agent becomes the actor unless --act says otherwise, as with `tollbooth token`",
    )
    explain.add_argument(
        "--act", action="append", default=[], help="an actor in the delegation chain, outermost first (repeatable)"
    )
    mcp = explain.add_mutually_exclusive_group()
    mcp.add_argument("--mcp-tool", metavar="NAME", help="on an MCP route: a tools/call of this tool")
    mcp.add_argument("--mcp-resource", metavar="URI", help="on an MCP route: a resources/read of this URI")
    mcp.add_argument("--mcp-prompt", metavar="NAME", help="on an MCP route: a prompts/get of this prompt")
    explain.add_argument(
        "--mcp-arguments", metavar="JSON", default="{}", help="with --mcp-tool: the call's arguments (a JSON object)"
    )
    explain.add_argument("--json", action="store_true", help="print the decision as JSON")
    explain.set_defaults(func=cmd_explain)

    token = verbs.add_parser(
        "token",
        help="mint a token locally for development",
        description="Mint an access token with the local signing key (development only). The agent must be "
        "in the config, and the scopes within its `scopes`. Prints the token, or with --json a token response.",
    )
    _add_config(token)
    token.add_argument("--agent", required=True, help="the agent's client_id (a key under `agents:`)")
    token.add_argument("--scope", action="append", default=[], help="scope(s) to grant (repeatable or space-separated)")
    token.add_argument(
        "--subject",
        help="act on behalf of this subject: a delegated token (default: the agent itself; "
        "the agent becomes the actor unless --act says otherwise)",
    )
    token.add_argument("--act", action="append", help="delegation chain: actor(s), outermost first (repeatable)")
    token.add_argument(
        "--ttl", help="lifetime, e.g. 5m (default: issuer.access_token_ttl, capped at the agent's max_token_ttl)"
    )
    token.add_argument("--json", action="store_true", help="print a token response as JSON")
    token.set_defaults(func=cmd_token)

    keys = verbs.add_parser(
        "keys",
        help="manage signing keys",
        description="Generate, rotate, prune or list the issuer's signing keys. A key stops signing when a newer "
        "key of issuer.algorithm appears (it is retired) and stays published until every token it signed has "
        "expired: issuer.access_token_ttl + proxy.clock_leeway + 60s for running gateways to reload.",
    )
    keys_verbs = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    rotate = keys_verbs.add_parser(
        "rotate",
        help="generate a new active key, then delete the files of expired keys",
        description="Generate a new signing key (it signs new tokens from now on; the previous keys stay "
        "published until the tokens they signed expire), then delete the files of keys no longer published. "
        "Running gateways pick up the change within seconds.",
    )
    generate = keys_verbs.add_parser(
        "generate",
        help="generate a new signing key only (no pruning)",
        description="Generate a new signing key in the keys directory; it signs new tokens from now on, and the "
        "older keys stay published until the tokens they signed expire. Deletes nothing: see `keys rotate`.",
    )
    prune = keys_verbs.add_parser(
        "prune",
        help="delete the files of keys no longer published",
        description="Delete the files of retired keys whose tokens have all expired. Never deletes the active key "
        "or the newest key of any algorithm.",
    )
    listing = keys_verbs.add_parser(
        "list",
        help="list signing keys and their state (* marks the active one)",
        description="List the signing keys, newest first, with their state: active (signs new tokens), next (a "
        "newer key of another algorithm, not in use), retired (published until the tokens it signed expire) or "
        "expired (no longer published; its file goes at the next `keys rotate` or `keys prune`).",
    )
    for verb in (rotate, generate, prune, listing):
        _add_config(verb)
        verb.add_argument("--keys-dir", help="override issuer.keys_dir")
        verb.set_defaults(func=cmd_keys)
    for verb in (rotate, generate):
        verb.add_argument("--algorithm", choices=SIGNING_ALGORITHMS)
        verb.add_argument(
            "--activate-in",
            default=None,
            metavar="DURATION",
            help="publish the new key now but sign with it only after DURATION (e.g. 2m): with several replicas, "
            "longer than it takes every one to see the file (a Kubernetes Secret: about 2m)",
        )
    for verb in (rotate, prune):
        verb.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    listing.add_argument("--json", action="store_true", help="print JSON")
    agent_key = keys_verbs.add_parser(
        "agent",
        help="generate an agent's key pair for private_key_jwt and print its `jwks` config block",
        description="Generate a key pair for an agent: the private key goes to a file (mode 0600) for the agent's "
        "SDK (`TollboothAuth(NAME, private_key=FILE, ...)`); the public key is printed as the `jwks` block to "
        "paste under `agents:` in the gateway config. Needs no config.",
    )
    agent_key.add_argument("name", metavar="NAME", help="the agent's client_id")
    agent_key.add_argument("--algorithm", choices=SIGNING_ALGORITHMS, default="ES256")
    agent_key.add_argument("--out", metavar="FILE", help="where to write the private key (default: NAME.pem)")
    agent_key.add_argument("--force", action="store_true", help="replace FILE if it exists")
    agent_key.set_defaults(func=cmd_keys_agent)

    mcp_command = verbs.add_parser(
        "mcp", help="MCP routes: draft rules from a server", description="Work with MCP routes (docs/mcp.md)."
    )
    mcp_verbs = mcp_command.add_subparsers(dest="mcp_command", required=True, metavar="ACTION")
    draft = mcp_verbs.add_parser(
        "draft",
        help="print a draft mcp: block from what a route's MCP server offers",
        description="Connect to the route's upstream (its URL plus the route's path, with the upstream's headers), "
        "list its tools, resources and prompts, and print a draft mcp: block. Tool annotations suggest the scopes: "
        "readOnlyHint -> PREFIX.read, destructiveHint -> PREFIX.admin, others PREFIX.write. Exit 2 when the server "
        "cannot be reached.",
    )
    _add_config(draft)
    draft.add_argument("--route", required=True, help="the route whose upstream is the MCP server")
    draft.add_argument("--scope-prefix", help="the scopes' prefix (default: the upstream's name)")
    draft.set_defaults(func=cmd_mcp_draft)

    audit = verbs.add_parser(
        "audit", help="read the audit trail", description="Read the audit trail back (see docs/audit.md)."
    )
    audit_verbs = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    audit_tail = audit_verbs.add_parser(
        "tail",
        help="print recent audit events, optionally following new ones",
        description="Print the newest audit events, oldest first, from the Redis stream (audit.stream) or, with no "
        "redis.url, the JSON-lines file (audit.file). A table on a terminal; JSON lines when piped or with --json.",
    )
    _add_config(audit_tail)
    audit_tail.add_argument("-n", "--lines", type=int, help="how many events (default: 20, or all with --since)")
    audit_tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events as they arrive")
    audit_tail.add_argument("--agent", help="only this agent (client_id)")
    audit_tail.add_argument("--subject", help="only events for this subject (user or org acted for)")
    audit_tail.add_argument("--decision", choices=["allow", "deny"], help="only allowed or only denied")
    audit_tail.add_argument("--since", metavar="DURATION", help="only events of the last DURATION (10m, 2h, 1d)")
    audit_tail.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    audit_tail.set_defaults(func=cmd_audit_tail)

    revoke = verbs.add_parser(
        "revoke",
        help="revoke a token by jti, or every token of an agent or subject",
        description="Revoke tokens at every gateway sharing this config's state (Redis when redis.url is set, "
        "else issuer.revocations_file). --agent and --subject revoke every token issued until now, refresh "
        "tokens included; tokens issued afterwards work. The jti of a token is in the audit log and in "
        "X-Tollbooth-Token-Id upstream.",
    )
    _add_config(revoke)
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--jti", help="the token id (jti claim) of one access token; write --jti=ID when the id begins with -"
    )
    which.add_argument("--agent", help="an agent's client_id: every token issued to it so far")
    which.add_argument("--subject", help="a subject (user or org): every token issued for it so far")
    revoke.set_defaults(func=cmd_revoke)

    for name, func, what in (("block", cmd_block, "stop"), ("unblock", cmd_unblock, "let through again")):
        sub = verbs.add_parser(
            name,
            help=f"the kill switch: {what} an agent or a subject at every gateway within a second",
            description=f"{what.capitalize()} every request and token of an agent (also when it acts for someone, "
            "or as an actor in a delegation chain) or of a subject, at every gateway sharing this config's state "
            "within a second; blocked callers get 403 access_denied naming the block, their open streams are "
            "closed and the token service issues them nothing. Blocks persist until unblocked. With --admin, "
            "through the admin API (token in TOLLBOOTH_ADMIN_TOKEN); else straight into the shared state.",
        )
        _add_config(sub)
        sub.add_argument("--admin", metavar="URL", help="the admin listener, e.g. http://127.0.0.1:9090")
        party = sub.add_mutually_exclusive_group(required=True)
        party.add_argument("--agent", help="an agent's client_id")
        party.add_argument("--subject", help="a subject (a person or org)")
        party.add_argument("--list", action="store_true", help="show the blocks in force")
        if name == "block":
            sub.add_argument("--reason", help="why, shown to the blocked caller and in the audit log")
        sub.set_defaults(func=func, reason=None)

    approvals = verbs.add_parser(
        "approvals",
        help="list, show, approve or deny the calls held for a person's approval",
        description="The calls held by `approval: required` routes and MCP tool rules, through a gateway's admin "
        "API (--admin URL, token in TOLLBOOTH_ADMIN_TOKEN). An approval is for exactly one call; approving lets "
        "it (or its identical retry) through once.",
    )
    approvals.add_argument("action", choices=["list", "show", "approve", "deny"])
    approvals.add_argument("id", nargs="?", help="the approval id (show, approve, deny)")
    approvals.add_argument(
        "--admin", required=True, metavar="URL", help="the admin listener, e.g. http://127.0.0.1:9090"
    )
    approvals.add_argument("--reason", help="why (approve, deny): shown to the agent on a denial, and audited")
    approvals.set_defaults(func=cmd_approvals)

    schema = verbs.add_parser(
        "schema",
        help="print the config's JSON Schema",
        description="Print the JSON Schema of the config file (for editors and CI).",
    )
    schema.set_defaults(func=cmd_schema)

    hash_secret = verbs.add_parser(
        "hash-secret",
        help="hash an agent secret for `secret_hash`",
        description="Read a secret on standard input (one line; prompted without echo on a terminal) and print "
        "the argon2id hash to put in agents.<id>.secret_hash.",
    )
    hash_secret.set_defaults(func=cmd_hash_secret)

    demo = verbs.add_parser(
        "demo",
        help="serve the example config with a bundled demo upstream (make run)",
        description="Start a fake CRM API and the gateway, and print curl lines to try.",
    )
    _add_config(demo)
    demo.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `tollbooth schema | head`: the reader left; say nothing, and keep the interpreter's flush at exit quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
