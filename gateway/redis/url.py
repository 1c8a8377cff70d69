"""What a `redis.url` names: one Redis server, a master watched by Redis Sentinel, or a Redis Cluster.

    redis://[user:password@]host[:port][/db]             one server; rediss:// for TLS
    unix://[user:password@]/path/to/redis.sock[?db=N]    one server on a Unix socket
    redis+sentinel://[user:password@]host:26379[,host:26379…]/master-name[/db][?sentinel_password=…]
    redis+cluster://[user:password@]host:6379[,host:6379…]

`rediss+sentinel://` and `rediss+cluster://` use TLS. In a Sentinel URL the hosts are the Sentinels, the user and
password are the master's, and `sentinel_username` / `sentinel_password` authenticate to the Sentinels when they
require it. A Cluster URL names some nodes to start from (the client learns the others) and has no database. Every
TLS URL may name a private CA (`ssl_ca_certs=/path/ca.pem`) and a client certificate (`ssl_certfile`,
`ssl_keyfile`); options that weaken TLS are refused. Percent-encode a password's reserved characters (`?` as %3F,
`#` as %23, `@` as %40, `/` as %2F, `%` as %25).

Pure: no I/O and no Redis client, so loading the config can check the URL. `redacted` is how a URL is shown in
errors and logs: never with its password. Errors quote only the redacted URL and pieces after its last `@`, which
hold no password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote

Kind = Literal["redis", "sentinel", "cluster"]

# scheme -> (kind, TLS)
_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("redis", False),
    "rediss": ("redis", True),
    "unix": ("redis", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_LABELS: dict[Kind, str] = {"redis": "single-server", "sentinel": "Sentinel", "cluster": "Cluster"}
_DEFAULT_PORTS: dict[Kind, int] = {"redis": 6379, "sentinel": 26379, "cluster": 6379}
_PARAMETERS: dict[Kind, tuple[str, ...]] = {
    "redis": ("db",),
    "sentinel": ("sentinel_username", "sentinel_password"),
    "cluster": (),
}
# Files redis-py's TLS reads: a private CA, and the client certificate a server with `tls-auth-clients` asks for.
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
# redis-py options that would weaken TLS, so that anyone on the network path could pose as Redis: (the values that
# keep the default checks, what any other does, said after the option's name).
_WEAKENING: dict[str, tuple[tuple[str, ...], str]] = {
    "ssl_cert_reqs": (("required",), " other than required turns off checking the server's certificate"),
    "ssl_check_hostname": (("true",), "=false accepts a certificate made out to any host"),
    "ssl_include_verify_flags": ((), " changes how certificates are checked"),
    "ssl_exclude_verify_flags": ((), " turns certificate checks off"),
    "ssl_min_version": ((), " can let an older TLS version through"),
    "ssl_ciphers": ((), " can let weak ciphers through"),
}
# Query parameters whose value is a credential (redis-py reads `password` from the query of a plain URL too). The
# value runs on over a `#`: one there is most likely a raw `#` in the password, not the start of a fragment.
_SECRET_PARAMETER = re.compile(r"(?i)([?&][^=&#]*(?:password|secret|token)[^=&#]*=)[^&]*")
# Characters that end a URL's userinfo (RFC 3986 §3.2.1): in a password they must be percent-encoded.
_ENDS_USERINFO = re.compile(r"[/?#]")


class RedisUrlError(ValueError):
    """A `redis.url` that names no Redis Tollbooth can connect to; the message shows the URL redacted."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed `redis.url`. `nodes` are the Sentinels (kind "sentinel") or the Cluster's seed nodes (kind
    "cluster"); a plain URL ("redis") keeps only `url`, which redis-py parses itself, as it always has.
    `tls_files` are the URL's ssl_ca_certs / ssl_certfile / ssl_keyfile, as redis-py's keyword arguments."""

    kind: Kind
    url: str = field(repr=False)
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls_files: tuple[tuple[str, str], ...] = ()


def _userinfo(text: str) -> tuple[str | None, str]:
    """(userinfo, the rest) of what follows `scheme://`. Everything up to the last `@` is the userinfo: hosts,
    database numbers and the parameters Tollbooth takes hold no raw `@`, so one in a password is still taken for
    part of it, and redacted."""
    userinfo, at, rest = text.rpartition("@")
    return (userinfo, rest) if at else (None, text)


def redacted(url: str) -> str:
    """`url` with its password (and any password-like query value) replaced by `***`, for errors and logs."""
    scheme, sep, text = url.partition("://")
    if not sep:
        scheme, text = "", url
    userinfo, rest = _userinfo(text)
    if userinfo is None:
        return scheme + sep + _hide_secret_parameters(text)
    at = len(userinfo)
    if any(found.start() < at < found.end() for found in _SECRET_PARAMETER.finditer(text)):
        # The last `@` ends either the userinfo or a part of `?sentinel_password=p@ss`: which, no one can tell.
        return f"{scheme}{sep}***"
    user, colon, _ = userinfo.partition(":")
    # No colon: redis-py reads a lone userinfo as the user name, but people put passwords there: hide it too. A `/`,
    # `?` or `#` in the userinfo leaves unclear where the user name ends: hide it all.
    shown_user = f"{user}:" if colon and user and not _ENDS_USERINFO.search(userinfo) else ""
    return f"{scheme}{sep}{shown_user}***@{_hide_secret_parameters(rest)}"


def _hide_secret_parameters(text: str) -> str:
    return _SECRET_PARAMETER.sub(r"\1***", text)


def parse_redis_url(url: str) -> RedisTarget:
    """The target `url` names; RedisUrlError (with the URL redacted) saying what is wrong and how to write it."""
    shown = redacted(url)
    scheme, sep, text = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        known = ", ".join(f"{name}://" for name in _SCHEMES)
        raise RedisUrlError(f"{shown!r} is not a Redis URL: it must start with one of {known}")
    kind, tls = _SCHEMES[scheme.lower()]
    # `unix:///path` has no authority (RFC 3986 §3.2), so no password: an `@` there is in the socket's path. (Shown
    # redacted all the same: better a path half hidden than a misplaced password shown.)
    userinfo, rest = (None, text) if scheme.lower() == "unix" and text.startswith("/") else _userinfo(text)
    if userinfo is not None and _ENDS_USERINFO.search(userinfo):
        raise RedisUrlError(
            f"{shown}: a raw /, ? or # before the last @ would end the user and password early; "
            "percent-encode the password: ? as %3F, # as %23, @ as %40, / as %2F"
        )
    if "#" in rest:
        raise RedisUrlError(f"{shown}: a Redis URL has no #fragment; percent-encode a # in a password as %23")
    location, _, query = rest.partition("?")
    hosts, slash, path = location.partition("/")
    options = _parameters(query, kind, tls, shown)
    tls_files = tuple((name, value) for name, value in options.items() if name in _TLS_FILES)
    if kind == "redis":
        _check_server(scheme, hosts, path, options, shown)
        return RedisTarget("redis", url, tls=tls, tls_files=tls_files)
    user, password = (None, None) if userinfo is None else _credentials(userinfo)
    nodes = _nodes(hosts, _DEFAULT_PORTS[kind], shown)
    if kind == "cluster":
        if path.strip("/") not in ("", "0"):
            raise RedisUrlError(f"{shown}: Redis Cluster has only database 0; drop /{path} from the URL")
        return RedisTarget("cluster", url, tls=tls, nodes=nodes, username=user, password=password, tls_files=tls_files)
    master, _, db = path.partition("/")
    if not slash or not master:
        raise RedisUrlError(
            f"{shown}: no master name; put the name the Sentinels monitor as the path, like "
            f"{scheme}://{hosts or 'sentinel:26379'}/mymaster"
        )
    db = db.strip("/")
    if db and not db.isdigit():
        raise RedisUrlError(f"{shown}: {db!r} is not a database number; write /{master}/0 or leave it out")
    return RedisTarget(
        "sentinel",
        url,
        tls=tls,
        nodes=nodes,
        master=unquote(master),
        db=int(db or 0),
        username=user,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        tls_files=tls_files,
    )


def _check_server(scheme: str, hosts: str, path: str, options: dict[str, str], shown: str) -> None:
    """What redis-py would trip over at the first connection (or, for the database, silently read as 0)."""
    if scheme.lower() == "unix":
        if not path:
            raise RedisUrlError(f"{shown}: no socket path; write it like unix:///run/redis/redis.sock")
    else:
        if hosts and len(_nodes(hosts, _DEFAULT_PORTS["redis"], shown)) > 1:
            raise RedisUrlError(
                f"{shown}: {scheme}:// names one server; list Sentinels with redis+sentinel:// "
                "or Cluster nodes with redis+cluster://"
            )
        if path.strip("/") and not path.strip("/").isdigit():
            raise RedisUrlError(f"{shown}: {path.strip('/')!r} is not a database number; write /0 or leave it out")
    if not options.get("db", "0").isdigit():
        raise RedisUrlError(f"{shown}: db takes a database number, like db=0")


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    user, colon, password = userinfo.partition(":")
    if not colon:
        return None, unquote(user) or None  # `redis+sentinel://secret@host`: a password alone
    return unquote(user) or None, unquote(password) or None


def _nodes(hosts: str, default_port: int, shown: str) -> tuple[tuple[str, int], ...]:
    if not hosts:
        raise RedisUrlError(f"{shown}: no host; list one or more as host:port,host:port")
    nodes = []
    for item in hosts.split(","):
        if item.startswith("["):  # an IPv6 address: [::1]:7000
            host, bracket, port = item[1:].partition("]")
            if not bracket or port and not port.startswith(":"):
                raise RedisUrlError(f"{shown}: {item!r} is not [IPv6 address]:port")
            port = port[1:]
        else:
            host, _, port = item.partition(":")
        if not host:
            raise RedisUrlError(f"{shown}: an empty host in {hosts!r}; separate host:port pairs with single commas")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise RedisUrlError(f"{shown}: {item!r} has an invalid port; write host:port with a port of 1-65535")
        nodes.append((unquote(host), int(port) if port else default_port))
    return tuple(nodes)


def _parameters(query: str, kind: Kind, tls: bool, shown: str) -> dict[str, str]:
    """The query's parameters, checked: errors name a parameter but never quote a value (it may be a secret)."""
    takes = _PARAMETERS[kind] + _TLS_FILES
    options = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name in _WEAKENING:
            keeps, why = _WEAKENING[name]
            if value not in keeps:
                raise RedisUrlError(
                    f"{shown}: {name}{why}, which would let anyone on the network path pose as Redis; Tollbooth "
                    "refuses options that weaken TLS: leave it out (for a private CA, add ssl_ca_certs=/path/ca.pem)"
                )
        elif name not in takes:
            raise RedisUrlError(
                f"{shown}: unknown parameter {name!r}; a {_LABELS[kind]} URL takes only {', '.join(takes)}"
            )
        if name.startswith("ssl_") and not tls:
            raise RedisUrlError(
                f"{shown}: {name} is a TLS option but the URL does not use TLS; start it with rediss://, "
                "rediss+sentinel:// or rediss+cluster://"
            )
        if name in _TLS_FILES and not value:
            raise RedisUrlError(f"{shown}: {name} names no file; write {name}=/path/to/file.pem")
        options[name] = value
    return options
