"""`redis.url`: the three forms (one server, Sentinel, Cluster), the errors for a bad one, and passwords never shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config
from gateway.redis_url import RedisTarget, RedisUrlError, parse_redis_url, redacted

PASSWORD = "hunter2-s3cret"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", {"kind": "redis", "tls": False}),
        ("rediss://:pw@redis.internal:6380/2", {"kind": "redis", "tls": True}),
        ("unix:///run/redis/redis.sock?db=1", {"kind": "redis"}),
        ("REDIS://h", {"kind": "redis"}),  # schemes are case-insensitive (RFC 3986 §3.1)
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380/mymaster",
            {"kind": "sentinel", "nodes": (("10.0.0.1", 26379), ("10.0.0.2", 26380)), "master": "mymaster", "db": 0},
        ),
        (
            "rediss+sentinel://app:p%40ss@s1,s2:5000/my%20master/3?sentinel_password=sp&sentinel_username=watch",
            {
                "kind": "sentinel",
                "tls": True,
                "nodes": (("s1", 26379), ("s2", 5000)),  # 26379: the Sentinel port when none is given
                "master": "my master",
                "db": 3,
                "username": "app",
                "password": "p@ss",
                "sentinel_username": "watch",
                "sentinel_password": "sp",
            },
        ),
        ("redis+sentinel://:only-a-password@s:26379/m", {"username": None, "password": "only-a-password"}),
        ("redis+sentinel://just-a-password@s:26379/m", {"username": None, "password": "just-a-password"}),
        (
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            {"kind": "cluster", "nodes": (("127.0.0.1", 7000), ("127.0.0.1", 7001)), "db": 0},
        ),
        (
            "rediss+cluster://default:pw@[::1]:7000,node-b/0",
            {"kind": "cluster", "tls": True, "nodes": (("::1", 7000), ("node-b", 6379)), "password": "pw"},
        ),
    ],
)
def test_a_url_names_its_topology(url: str, expected: dict[str, Any]) -> None:
    target = parse_redis_url(url)
    assert {name: getattr(target, name) for name in expected} == expected
    assert target.url == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("localhost:6379", "is not a Redis URL: it must start with one of redis://"),
        ("http://redis:6379", "is not a Redis URL"),
        ("redis+sentinel://s1:26379", "no master name; put the name the Sentinels monitor as the path"),
        ("redis+sentinel://s1:26379/", "no master name"),
        ("redis+sentinel://s1:26379/m/x", "'x' is not a database number"),
        ("redis+sentinel:///m", "no host; list one or more as host:port,host:port"),
        ("redis+sentinel://s1,,s2/m", "an empty host in 's1,,s2'"),
        ("redis+sentinel://s1:0/m", "'s1:0' has an invalid port"),
        ("redis+sentinel://s1:port/m", "'s1:port' has an invalid port"),
        ("redis+sentinel://[::1/m", "'[::1' is not [IPv6 address]:port"),
        ("redis+sentinel://s1/m?db=2", "unknown parameter 'db'; a Sentinel URL takes only sentinel_username"),
        ("redis+sentinel://s1/m#frag", "a Redis URL has no #fragment"),
        ("redis+cluster://n1:7000/1", "Redis Cluster has only database 0"),
        ("redis+cluster://n1:7000?ssl=true", "a Cluster URL takes no query parameters"),
        ("redis://h:99999/0", "invalid port"),
        ("redis://h:6379/zero", "'zero' is not a database number"),
        ("unix://", "no socket path"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url(url)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@h:6379/x",
        f"redis://user:{PASSWORD}@h:99999",
        f"http://user:{PASSWORD}@h",
        f"redis+sentinel://app:{PASSWORD}@s1:26379",
        f"redis+sentinel://{PASSWORD}@s1:bad/m",
        f"redis+sentinel://s1/m?sentinel_password={PASSWORD}&bogus=1",
        f"redis+cluster://:{PASSWORD}@n1/5",
        f"redis+cluster://u:{PASSWORD[:4]}@{PASSWORD[4:]}@n1/5",  # an unencoded @ in the password
        f"redis+cluster://u:{PASSWORD[:4]}/{PASSWORD[4:]}@n1/5",  # an unencoded / in the password
    ],
)
def test_an_error_never_shows_the_password(url: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url(url)
    message = str(caught.value)
    assert PASSWORD not in message and PASSWORD[4:] not in message and "***" in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@h:6379/0", "redis://***@h:6379/0"),
        ("rediss://app:pw@h:6380", "rediss://app:***@h:6380"),
        ("redis://lonely@h", "redis://***@h"),  # a userinfo without a colon may well be a password
        ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
        ("unix://u:pw@/run/redis.sock?db=0", "unix://u:***@/run/redis.sock?db=0"),
        (
            "redis+sentinel://a:pw@s1:1,s2:2/m?sentinel_password=sp",
            "redis+sentinel://a:***@s1:1,s2:2/m?sentinel_password=***",
        ),
        ("redis+cluster://u:p@ss@n1:7000", "redis+cluster://u:***@n1:7000"),
        ("u:pw@h:6379", "u:***@h:6379"),
    ],
)
def test_redacted_hides_passwords_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_a_target_does_not_print_its_passwords() -> None:
    target = parse_redis_url(f"redis+sentinel://app:{PASSWORD}@s1/m?sentinel_password={PASSWORD}")
    assert isinstance(target, RedisTarget) and PASSWORD not in repr(target)


def test_config_load_rejects_a_bad_redis_url_at_redis_url_without_its_password(tmp_path: Path) -> None:
    path = tmp_path / "tollbooth.yaml"
    path.write_text("redis:\n  url: ${REDIS_URL}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"REDIS_URL": f"redis+sentinel://app:{PASSWORD}@10.0.0.1:26379"})
    assert caught.value.problems == [
        f"{path}: redis: url: redis+sentinel://app:***@10.0.0.1:26379: no master name; put the name the Sentinels "
        "monitor as the path, like redis+sentinel://10.0.0.1:26379/mymaster"
    ]


def test_config_load_accepts_each_form(tmp_path: Path) -> None:
    path = tmp_path / "tollbooth.yaml"
    path.write_text("redis:\n  url: ${REDIS_URL}\n")
    for url in ("redis://r:6379/0", "redis+sentinel://s1:26379,s2:26379/mymaster", "redis+cluster://n1:7000,n2:7001"):
        assert load_config(path, env={"REDIS_URL": url}).config.redis.url == url
