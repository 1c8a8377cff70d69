"""The `tollbooth` command: argument parsing only; each verb calls into the package."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from gateway import __version__
from gateway.config import ConfigError, LoadedConfig, config_schema, load_config, parse_duration

DEFAULT_CONFIG = os.environ.get("TOLLBOOTH_CONFIG", "config/example.yaml")


def _load(path: str) -> LoadedConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(1) from None


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

    setup_logging(args.log_level, args.log_format)
    loaded = _load(args.config)
    if args.workers > 1:
        argv = ["serve", "--config", args.config, "--log-level", args.log_level, "--log-format", args.log_format]
        for name in args.only or []:
            argv += ["--only", name]
        return run_workers(argv, args.workers)
    import uvloop

    reuse_port = os.environ.get("TOLLBOOTH_REUSE_PORT") == "1"
    uvloop.run(run_gateway(loaded, args.only or LISTENERS, reuse_port=reuse_port))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.proxy.authorize import route_warnings

    loaded = _load(args.config)
    config = loaded.config
    warnings = route_warnings(config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    files = ", ".join(str(p) for p in loaded.sources)
    print(f"ok: {files}: {len(config.routes)} routes, {len(config.upstreams)} upstreams, {len(config.agents)} agents")
    return 1 if warnings and args.strict else 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gateway.explain import explain

    loaded = _load(args.config)
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
        )
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        verdict = "ALLOW" if result["allow"] else "DENY"
        print(f"{verdict} {result['status']} {args.method.upper()} {args.path}")
        print(f"  route:  {result['route'] or '(none)'}")
        print(f"  reason: {result['reason']}: {result['description']}")
        if result["required_scopes"]:
            print(f"  needs:  {' '.join(result['required_scopes'])}")
    return 0 if result["allow"] else 2


def cmd_token(args: argparse.Namespace) -> int:
    from gateway.issuer.keys import KeyStore
    from gateway.issuer.tokens import mint_access_token

    config = _load(args.config).config
    scopes = [s for chunk in args.scope for s in chunk.split()]
    agent = config.agents.get(args.agent)
    if agent is not None:
        outside = [s for s in scopes if s not in agent.scopes]
        if outside:
            print(
                f"error: agent {args.agent!r} may not hold {' '.join(outside)} (its scopes: "
                f"{' '.join(agent.scopes) or 'none'})",
                file=sys.stderr,
            )
            return 1
    ttl = parse_duration(args.ttl) if args.ttl else config.issuer.access_token_ttl
    act: dict[str, object] | None = None
    for actor in reversed(args.act or []):
        act = {"sub": actor, **({"act": act} if act else {})}
    keys = KeyStore.load(config.issuer.keys_dir, config.issuer.algorithm)
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
    if args.json:
        print(json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": int(ttl), "claims": claims}))
    else:
        print(token)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from gateway.issuer.keys import KeyStore, generate_key

    config = _load(args.config).config
    keys_dir = args.keys_dir or config.issuer.keys_dir
    if args.keys_command == "generate":
        key = generate_key(keys_dir, args.algorithm or config.issuer.algorithm)
        print(f"generated {key.algorithm} key {key.kid} in {keys_dir} (now the active signing key)")
        return 0
    store = KeyStore.load(keys_dir, config.issuer.algorithm, generate_if_empty=False)
    rows = [
        {
            "kid": key.kid,
            "algorithm": key.algorithm,
            "created": datetime.fromtimestamp(key.created_at, UTC).isoformat(timespec="seconds"),
            "active": key.kid == store.active.kid,
        }
        for key in store.keys
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{'*' if row['active'] else ' '} {row['kid']}  {row['algorithm']:<6} {row['created']}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(config_schema(), indent=2))
    return 0


def cmd_hash_secret(args: argparse.Namespace) -> int:
    from argon2 import PasswordHasher

    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        print(
            "error: give the secret on standard input, e.g. `head -c 32 /dev/urandom | base64 | tee secret.txt | "
            "tollbooth hash-secret`",
            file=sys.stderr,
        )
        return 1
    print(PasswordHasher().hash(secret))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo
    from gateway.logs import setup_logging

    setup_logging(args.log_level, "text")
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
    check.set_defaults(func=cmd_check)

    explain = verbs.add_parser(
        "explain",
        help="would this request be allowed, and by which rule?",
        description="Explain the decision for METHOD PATH with a token or with given scopes. "
        "Exit 0 when allowed, 2 when denied.",
    )
    _add_config(explain)
    explain.add_argument("method", help="HTTP method, e.g. GET")
    explain.add_argument("path", help="request path as sent on the wire, e.g. /v1/customers/42")
    explain.add_argument("--token", help="a bearer token to verify and use")
    explain.add_argument("--scope", action="append", default=[], help="a scope the caller holds (repeatable)")
    explain.add_argument("--agent", default="explain", help="the agent (client_id) to assume without --token")
    explain.add_argument("--subject", help="the subject acted for (a delegated token) without --token")
    explain.add_argument(
        "--act", action="append", default=[], help="an actor in the delegation chain, outermost first (repeatable)"
    )
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(func=cmd_explain)

    token = verbs.add_parser(
        "token",
        help="mint a token locally for development",
        description="Mint an access token with the local signing key (development only).",
    )
    _add_config(token)
    token.add_argument("--agent", required=True, help="the agent's client_id")
    token.add_argument("--scope", action="append", default=[], help="scope(s) to grant (repeatable or space-separated)")
    token.add_argument("--subject", help="act on behalf of this subject (default: the agent itself)")
    token.add_argument("--act", action="append", help="delegation chain: actor(s), outermost first")
    token.add_argument("--ttl", help="lifetime, e.g. 5m (default: issuer.access_token_ttl)")
    token.add_argument("--json", action="store_true", help="print a token response as JSON")
    token.set_defaults(func=cmd_token)

    keys = verbs.add_parser("keys", help="manage signing keys", description="Generate or list signing keys.")
    keys_verbs = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys_verbs.add_parser("generate", help="generate a new signing key (it becomes the active one)")
    _add_config(generate)
    generate.add_argument("--keys-dir", help="override issuer.keys_dir")
    generate.add_argument("--algorithm", choices=["ES256", "EdDSA", "RS256", "PS256"])
    generate.set_defaults(func=cmd_keys)
    listing = keys_verbs.add_parser("list", help="list signing keys (* marks the active one)")
    _add_config(listing)
    listing.add_argument("--keys-dir", help="override issuer.keys_dir")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_keys)

    schema = verbs.add_parser(
        "schema",
        help="print the config's JSON Schema",
        description="Print the JSON Schema of the config file (for editors and CI).",
    )
    schema.set_defaults(func=cmd_schema)

    hash_secret = verbs.add_parser(
        "hash-secret",
        help="hash an agent secret for `secret_hash`",
        description="Read a secret on standard input; print the argon2id hash to put in agents.<id>.secret_hash.",
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


if __name__ == "__main__":
    raise SystemExit(main())
