"""Properties of the delegation-chain checks: whatever chain a token carries, the verifier honours it exactly when
every party in it is distinct, a chain the exchange would build is always one the verifier honours, and an
identity provider's prefix keeps its parties apart from every other issuer's and from our agents."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.issuer.grants import nest_act
from gateway.tokens.access_token import (
    InvalidToken,
    SubjectToken,
    act_claim,
    delegation_chain,
    namespaced,
    repeated_party,
    validate_claims,
)

ISSUER = "http://127.0.0.1:8081"
AUDIENCE = "http://127.0.0.1:8080"
NOW = 1_750_000_000.0

# Few names, so that chains repeat a party often; a prefix-like name too, so that prefixes meet raw names.
NAMES = st.sampled_from(["alice", "bob", "assistant", "helper", "worker", "corp:alice", "a", "A"])
CHAINS = st.lists(NAMES, max_size=6)
PREFIXES = st.from_regex(r"[a-z]{1,6}:", fullmatch=True)


def claims_for(subject: str, chain: list[str]) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "client_id": chain[0] if chain else subject,
        "iat": int(NOW),
        "exp": int(NOW) + 300,
        "jti": "j",
    }
    act = act_claim(chain)
    if act is not None:
        claims["act"] = act
    return claims


def honoured(claims: dict[str, object]) -> bool:
    try:
        validate_claims(claims, issuer=ISSUER, audience=AUDIENCE, now=NOW, leeway=0)
    except InvalidToken as exc:
        assert exc.reason == "circular_delegation", exc.reason
        return False
    return True


@given(NAMES, CHAINS)
def test_a_chain_is_honoured_exactly_when_no_party_repeats(subject: str, chain: list[str]) -> None:
    distinct = len({subject, *chain}) == len(chain) + 1
    assert honoured(claims_for(subject, chain)) == (not chain or distinct)
    assert (repeated_party(subject, chain) is None) == distinct


@given(NAMES, CHAINS)
def test_the_repeated_party_is_one_named_twice(subject: str, chain: list[str]) -> None:
    repeated = repeated_party(subject, chain)
    if repeated is not None:
        assert [subject, *chain].count(repeated) >= 2


@given(NAMES, st.lists(NAMES, max_size=6))
def test_chains_the_exchange_builds_are_always_honoured(subject: str, agents: list[str]) -> None:
    # Each agent in turn exchanges the last token; the token endpoint lets one through only when it is new to
    # the chain (grants._check_parties), and what it mints must then pass the verifier.
    act = None
    for agent in agents:
        if repeated_party(subject, (agent, *delegation_chain(act))) is not None:
            continue
        act = nest_act(agent, act)
        chain = list(delegation_chain(act))
        assert chain[0] == agent
        assert honoured(claims_for(subject, chain))


def _subject_token(subject: str, chain: list[str]) -> SubjectToken:
    return SubjectToken(
        issuer="https://idp.example",
        subject=subject,
        scopes=frozenset(),
        expires_at=NOW + 300,
        issued_at=NOW,
        act=act_claim(chain),
        may_act={"sub": "assistant"},
        jti=None,
        ancestors=(),
    )


@given(NAMES, CHAINS, PREFIXES)
def test_a_prefix_reaches_every_party_and_nothing_else(subject: str, chain: list[str], prefix: str) -> None:
    token = namespaced(_subject_token(subject, chain), prefix)
    assert token.subject == prefix + subject
    assert list(delegation_chain(token.act)) == [prefix + actor for actor in chain]
    assert token.may_act == {"sub": "assistant"}  # names our agent, which no prefix may touch
    assert repeated_party(token.subject, delegation_chain(token.act)) == (
        None if (found := repeated_party(subject, chain)) is None else prefix + found
    )


@given(NAMES, NAMES, PREFIXES, PREFIXES)
def test_two_issuers_never_share_a_subject(one: str, other: str, first: str, second: str) -> None:
    # The config refuses prefixes where one begins the other; any other pair keeps every subject apart.
    if first.startswith(second) or second.startswith(first):
        return
    assert namespaced(_subject_token(one, []), first).subject != namespaced(_subject_token(other, []), second).subject
