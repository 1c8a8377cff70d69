"""`redis.url`: the three forms (one server, Sentinel, Cluster), the errors for a bad one, and passwords never shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from gateway.config import ConfigError, load_config
from gateway.redis.url import RedisTarget, RedisUrlError, parse_redis_url, redacted

PASSWORD = "hunter2-s3cret"
# A password around each character that is reserved in a URL or special to the parsing here, written raw and
# percent-encoded; neither half may ever show.
HEAD, TAIL = "hunter2", "s3cretPW"
PASSWORDS = [HEAD + c + TAIL for c in "?#@/:%,"] + [HEAD + quote(c, safe="") + TAIL for c in "?#@/:%,"]


def refusal(url: str) -> str:
    """The message of the RedisUrlError that `url` must raise."""
    with pytest.raises(RedisUrlError) as caught:
        parse_redis_url(url)
    return str(caught.value)


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
        ("redis+cluster://u:p@ss@n1", {"username": "u", "password": "p@ss"}),  # the last @ ends the password
        ("redis://:p@ss@h:6379/0", {"kind": "redis"}),  # redis-py too splits at the last @
        ("unix:///run/redis@main/redis.sock", {"kind": "redis"}),  # no authority: the @ is in the path
        # TLS files: a private CA and a client certificate, for every form; settings that keep the checks on.
        (
            "rediss://h/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=true",
            {"kind": "redis", "tls_files": (("ssl_ca_certs", "/etc/ca.pem"),)},
        ),
        (
            "rediss+sentinel://s1/m?ssl_ca_certs=/ca.pem&sentinel_password=sp&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
            {
                "tls_files": (("ssl_ca_certs", "/ca.pem"), ("ssl_certfile", "/c.pem"), ("ssl_keyfile", "/k.pem")),
                "sentinel_password": "sp",
            },
        ),
        ("rediss+cluster://n1?ssl_ca_certs=/etc/my%20ca.pem", {"tls_files": (("ssl_ca_certs", "/etc/my ca.pem"),)}),
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
        ("redis+cluster://n1:7000?ssl=true", "unknown parameter 'ssl'; a Cluster URL takes only ssl_ca_certs, "),
        ("redis://h:99999/0", "invalid port"),
        ("redis://h:6379/zero", "'zero' is not a database number"),
        ("redis://a:6379,b:6379/0", "redis:// names one server; list Sentinels with redis+sentinel://"),
        ("redis://h#0", "a Redis URL has no #fragment"),
        ("unix://", "no socket path"),
        ("unix:///redis.sock?db=one", "db takes a database number, like db=0"),
        # Timeouts and the rest are Tollbooth's to set (a URL's would override them): only these are taken.
        ("redis://h?socket_timeout=60", "unknown parameter 'socket_timeout'; a single-server URL takes only db, "),
        ("redis://h?password=pw", "unknown parameter 'password'"),
        # A raw ?, # or / before the last @ is in the password (or the user): redis-py would cut it there.
        ("redis://:s3cr?et@redis:6379/0", "percent-encode the password: ? as %3F, # as %23, @ as %40, / as %2F"),
        ("redis+sentinel://:hunter#2@s1/m", "percent-encode the password"),
        ("redis://:p@ss/word@redis:6379", "percent-encode the password"),
        ("redis+sentinel://s1/m?sentinel_password=p@ss", "percent-encode the password"),
        # TLS files need a TLS URL and a path.
        ("redis://h?ssl_ca_certs=/ca.pem", "ssl_ca_certs is a TLS option but the URL does not use TLS; start it"),
        ("unix:///redis.sock?ssl_certfile=/c.pem", "ssl_certfile is a TLS option"),
        ("redis+sentinel://s1/m?ssl_ca_certs=/ca.pem", "with rediss://, rediss+sentinel:// or rediss+cluster://"),
        ("redis+cluster://n1?ssl_cert_reqs=required", "ssl_cert_reqs is a TLS option"),
        ("rediss+cluster://n1?ssl_ca_certs=", "ssl_ca_certs names no file; write ssl_ca_certs=/path/to/file.pem"),
        ("rediss+sentinel://s1/m?ssl_ca_path=/etc/ssl", "unknown parameter 'ssl_ca_path'; a Sentinel URL takes only"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url: str, problem: str) -> None:
    assert problem in refusal(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("rediss://h?ssl_cert_reqs=none", "ssl_cert_reqs other than required turns off checking the server's"),
        ("rediss://h?ssl_cert_reqs=optional", "ssl_cert_reqs other than required"),
        ("rediss://h?ssl_cert_reqs=required&ssl_cert_reqs=none", "ssl_cert_reqs other than required"),
        ("rediss://h?ssl_check_hostname=false", "ssl_check_hostname=false accepts a certificate made out to any host"),
        ("rediss://h?ssl_exclude_verify_flags=VERIFY_X509_STRICT", "ssl_exclude_verify_flags turns certificate"),
        ("rediss://h?ssl_include_verify_flags=VERIFY_X509_PARTIAL_CHAIN", "ssl_include_verify_flags changes how"),
        ("rediss://h?ssl_min_version=2", "ssl_min_version can let an older TLS version through"),
        ("rediss://h?ssl_ciphers=NULL", "ssl_ciphers can let weak ciphers through"),
        ("rediss+sentinel://s1/m?ssl_cert_reqs=none", "ssl_cert_reqs other than required"),
        ("rediss+cluster://n1?ssl_check_hostname=no", "ssl_check_hostname=false"),
    ],
)
def test_an_option_that_weakens_tls_is_refused_and_says_why(url: str, problem: str) -> None:
    message = refusal(url)
    assert problem in message and "Tollbooth refuses options that weaken TLS" in message
    assert "add ssl_ca_certs=/path/ca.pem" in message  # what to do instead for a private CA


def hidden(text: str, password: str) -> bool:
    """Neither half of `password` (nor all of it) shows in `text`."""
    return HEAD not in text and TAIL not in text and password not in text


# Each template is wrong somewhere other than its password; with a raw ?, # or / the password itself is wrong too.
WRONG = [
    "redis://:{pw}@h:6379/x",
    "redis://app:{pw}@h:99999",
    "rediss://app:{pw}@h:6380/0?ssl_cert_reqs=none",
    "redis://:{pw}@a,b/0",
    "unix://:{pw}@/run/redis.sock?db=x",
    "redis+sentinel://app:{pw}@s1:bad/m",
    "redis+sentinel://:{pw}@s1,,s2/m",
    "redis+sentinel://:{pw}@s1/m?bogus=1",
    "redis+sentinel://:{pw}@s1/m#frag",
    "redis+sentinel://s1/m?sentinel_password={pw}&bogus=1",
    "redis+sentinel://s1:26379/m?sentinel_password={pw}#frag",
    "redis+cluster://u:{pw}@n1/5",
    "redis+cluster://:{pw}@n1:6379?ssl_ca_certs=/ca.pem",
    "rediss+cluster://:{pw}@[::1/0",
]
RIGHT = [
    "redis://:{pw}@h:6379/0",
    "rediss://app:{pw}@h:6380?ssl_ca_certs=/ca.pem",
    "unix://:{pw}@/run/redis.sock?db=1",
    "redis+sentinel://app:{pw}@s1:26379,s2/m/1?sentinel_password={pw}",
    "redis+cluster://:{pw}@n1:6379,n2:6379",
]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("template", WRONG)
def test_an_error_never_shows_the_password(template: str, password: str) -> None:
    message = refusal(template.format(pw=password))
    assert hidden(message, password) and "***" in message


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("template", WRONG + RIGHT)
def test_redacted_never_shows_the_password(template: str, password: str) -> None:
    assert hidden(redacted(template.format(pw=password)), password)


def delimited(template: str, password: str) -> bool:
    """A raw ?, # or / ends the userinfo early; a raw @ in a query value ends it after the hosts."""
    return bool(set(password) & set("?#/")) or "@" in password and "={pw}" in template


@pytest.mark.parametrize(("template", "password"), [(t, p) for t in RIGHT for p in PASSWORDS if not delimited(t, p)])
def test_a_password_with_its_delimiters_encoded_is_accepted(template: str, password: str) -> None:
    assert parse_redis_url(template.format(pw=password)).url == template.format(pw=password)


@pytest.mark.parametrize(("template", "password"), [(t, p) for t in RIGHT for p in PASSWORDS if delimited(t, p)])
def test_a_password_with_a_raw_delimiter_is_refused_without_showing_it(template: str, password: str) -> None:
    message = refusal(template.format(pw=password))
    assert "percent-encode" in message and hidden(message, password)


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
def test_an_error_never_shows_the_password_nor_part_of_it(url: str) -> None:
    message = refusal(url)
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
        # Everything up to the last @ is the user and password, whatever it holds; with a raw / ? or # in it, where
        # the user name ends is unclear, so it is hidden too.
        ("redis://:s3cr?et@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis+sentinel://:hunter#2@s1:26379/m", "redis+sentinel://***@s1:26379/m"),
        ("redis://u:p@ss/word@redis:6379", "redis://***@redis:6379"),
        ("rediss://user:pa?ss=word@redis:6380", "rediss://***@redis:6380"),
        # The last @ in a password-like query value: it may as well end a password with a raw ?: hide both.
        ("redis+sentinel://:pw@s1/m?sentinel_password=ab@cd", "redis+sentinel://***"),
        ("unix:///run/redis@main/redis.sock", "unix://***@main/redis.sock"),  # a path, but safe beats sorry
        ("rediss://h?ssl_ca_certs=/ca.pem", "rediss://h?ssl_ca_certs=/ca.pem"),
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


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cr?etPW@redis:6379/0", "redis://***@redis:6379/0"),
        ("redis+sentinel://:hunter#2PW@s1:26379/mymaster", "redis+sentinel://***@s1:26379/mymaster"),
        ("redis://:p@ss/wordPW@redis:6379", "redis://***@redis:6379"),
    ],
)
def test_config_load_says_to_percent_encode_a_password_without_showing_it(tmp_path: Path, url: str, shown: str) -> None:
    path = tmp_path / "tollbooth.yaml"
    path.write_text("redis:\n  url: ${REDIS_URL}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={"REDIS_URL": url})
    assert caught.value.problems == [
        f"{path}: redis: url: {shown}: a raw /, ? or # before the last @ would end the user and password early; "
        "percent-encode the password: ? as %3F, # as %23, @ as %40, / as %2F"
    ]


def test_config_load_accepts_each_form(tmp_path: Path) -> None:
    path = tmp_path / "tollbooth.yaml"
    path.write_text("redis:\n  url: ${REDIS_URL}\n")
    for url in ("redis://r:6379/0", "redis+sentinel://s1:26379,s2:26379/mymaster", "redis+cluster://n1:7000,n2:7001"):
        assert load_config(path, env={"REDIS_URL": url}).config.redis.url == url
