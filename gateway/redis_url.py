"""What a `redis.url` names: one Redis server, a master watched by Redis Sentinel, or a Redis Cluster.

    redis://[user:password@]host[:port][/db]             one server; rediss:// for TLS
    unix://[user:password@]/path/to/redis.sock[?db=N]    one server on a Unix socket
    redis+sentinel://[user:password@]host:26379[,host:26379…]/master-name[/db][?sentinel_password=…]
    redis+cluster://[user:password@]host:6379[,host:6379…]

`rediss+sentinel://` and `rediss+cluster://` use TLS. In a Sentinel URL the hosts are the Sentinels, the user and
password are the master's, and `sentinel_username` / `sentinel_password` authenticate to the Sentinels when they
require it. A Cluster URL names some nodes to start from (the client learns the others) and has no database. Percent-
encode a password's reserved characters (`@` as %40, `/` as %2F, `,` as %2C).

Pure: no I/O and no Redis client, so loading the config can check the URL. `redacted` is how a URL is shown in
errors and logs: never with its password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

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
_DEFAULT_PORTS: dict[Kind, int] = {"sentinel": 26379, "cluster": 6379}
_PARAMETERS: dict[Kind, tuple[str, ...]] = {"sentinel": ("sentinel_username", "sentinel_password"), "cluster": ()}
# Query parameters whose value is a credential (redis-py reads `password` from the query of a plain URL too).
_SECRET_PARAMETER = re.compile(r"(?i)([?&][^=&#]*(?:password|secret|token)[^=&#]*=)[^&#]*")


class RedisUrlError(ValueError):
    """A `redis.url` that names no Redis Tollbooth can connect to; the message shows the URL redacted."""


@dataclass(frozen=True)
class RedisTarget:
    """A parsed `redis.url`. `nodes` are the Sentinels (kind "sentinel") or the Cluster's seed nodes (kind
    "cluster"); a plain URL ("redis") keeps only `url`, which redis-py parses itself, as it always has."""

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


def _userinfo(text: str) -> tuple[str | None, str]:
    """(userinfo, the rest) of what follows `scheme://`. The last `@` before the query ends the userinfo, so an
    unencoded `@` or `/` in a password is still taken for part of it, and redacted."""
    end = min((i for i in (text.find("?"), text.find("#")) if i >= 0), default=len(text))
    at = text.rfind("@", 0, end)
    return (None, text) if at < 0 else (text[:at], text[at + 1 :])


def redacted(url: str) -> str:
    """`url` with its password (and any password-like query value) replaced by `***`, for errors and logs."""
    scheme, sep, text = url.partition("://")
    if not sep:
        scheme, text = "", url
    userinfo, rest = _userinfo(text)
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        # No colon: redis-py reads a lone userinfo as the user name, but people put passwords there: hide it too.
        rest = f"{user}:***@{rest}" if colon and user else f"***@{rest}"
    return scheme + sep + _SECRET_PARAMETER.sub(r"\1***", rest)


def parse_redis_url(url: str) -> RedisTarget:
    """The target `url` names; RedisUrlError (with the URL redacted) saying what is wrong and how to write it."""
    shown = redacted(url)
    scheme, sep, text = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        known = ", ".join(f"{name}://" for name in _SCHEMES)
        raise RedisUrlError(f"{shown!r} is not a Redis URL: it must start with one of {known}")
    kind, tls = _SCHEMES[scheme.lower()]
    if kind == "redis":
        _check_server_url(url, shown)
        return RedisTarget("redis", url, tls=tls)
    if "#" in text:
        raise RedisUrlError(f"{shown}: a Redis URL has no #fragment")
    userinfo, rest = _userinfo(text)
    user, password = (None, None) if userinfo is None else _credentials(userinfo)
    location, _, query = rest.partition("?")
    hosts, slash, path = location.partition("/")
    options = _parameters(query, kind, shown)
    nodes = _nodes(hosts, _DEFAULT_PORTS[kind], shown)
    if kind == "cluster":
        if path.strip("/") not in ("", "0"):
            raise RedisUrlError(f"{shown}: Redis Cluster has only database 0; drop /{path} from the URL")
        return RedisTarget("cluster", url, tls=tls, nodes=nodes, username=user, password=password)
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
    )


def _check_server_url(url: str, shown: str) -> None:
    """What redis-py would trip over at the first connection (or, for the database, silently read as 0)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (urlsplit checks the port only when asked)
    except ValueError:
        raise RedisUrlError(f"{shown}: invalid port; write host:port with a port of 1-65535") from None
    if parts.scheme.lower() == "unix":
        if not parts.path:
            raise RedisUrlError(f"{shown}: no socket path; write it like unix:///run/redis/redis.sock")
    elif parts.path.strip("/") and not parts.path.strip("/").isdigit():
        raise RedisUrlError(f"{shown}: {parts.path.strip('/')!r} is not a database number; write /0 or leave it out")


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


def _parameters(query: str, kind: Kind, shown: str) -> dict[str, str]:
    allowed = _PARAMETERS[kind]
    options = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in allowed:
            takes = f"takes only {', '.join(allowed)}" if allowed else "takes no query parameters"
            raise RedisUrlError(f"{shown}: unknown parameter {name!r}; a {kind.capitalize()} URL {takes}")
        options[name] = value
    return options
