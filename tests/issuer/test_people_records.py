"""What people's sign-ins leave in the shared records, in this process's memory and in a real Redis alike: codes
(single use, bound, a replay revoking what the first use issued, even when the two race on two replicas),
sessions and pending requests (bound to their browser), and registrations."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from support import Clock, RedisServer

from gateway.issuer.authorization import AuthorizationRequest
from gateway.issuer.codes import AuthorizationCodes, CodeReplayed
from gateway.issuer.oauth import OAuthError
from gateway.issuer.registration import Registrations, secret_matches
from gateway.issuer.sessions import SignIns, new_browser
from gateway.state import redis_client
from gateway.state.ephemeral import Ephemeral, MemoryEphemeral, RedisEphemeral

PUBLIC = "https://gw.example.com"
CLIENT = "https://client.example.com/oauth/metadata.json"
LOOPBACK = "http://127.0.0.1:33418/callback"
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"  # RFC 7636 appendix B
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
pytestmark = pytest.mark.anyio
REQUEST = AuthorizationRequest(CLIENT, LOOPBACK, "st", CHALLENGE, ("crm.read",), PUBLIC)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # redis-py's asyncio client


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Ephemeral]:
    if request.param == "memory":
        yield MemoryEphemeral(clock=clock)
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis_client(server.url)
    yield RedisEphemeral(client, f"test-{secrets.token_hex(4)}:")
    await client.aclose()


async def test_a_code_redeems_once_for_its_client_redirect_and_verifier(store: Ephemeral, clock: Clock):
    codes = AuthorizationCodes(store, clock=clock)
    code = await codes.issue(REQUEST, "alice", ("crm.read",), "users")
    grant = await codes.redeem(code, client_id=CLIENT, redirect_uri=LOOPBACK, verifier=VERIFIER)
    assert (grant.subject, grant.scopes, grant.request) == ("alice", ("crm.read",), REQUEST)
    assert await codes.record_issued(code, "jti", "jti-1")
    with pytest.raises(CodeReplayed) as replayed:
        await codes.redeem(code, client_id=CLIENT, redirect_uri=LOOPBACK, verifier=VERIFIER)
    assert replayed.value.issued == [("jti", "jti-1")] and replayed.value.reason == "code_replayed"
    # What the first redemption still mints after the replay is refused to it: the caller revokes it at once.
    assert not await codes.record_issued(code, "family", "f-1")


@pytest.mark.parametrize(
    ("client_id", "redirect_uri", "verifier", "reason"),
    [
        ("https://other.example.com/m.json", LOOPBACK, VERIFIER, "other_client"),
        (CLIENT, "http://127.0.0.1:1/callback", VERIFIER, "redirect_uri_mismatch"),
        (CLIENT, None, VERIFIER, "redirect_uri_mismatch"),
        (CLIENT, LOOPBACK, "x" * 43, "pkce_mismatch"),
        (CLIENT, LOOPBACK, None, "pkce_mismatch"),
    ],
)
async def test_a_code_presented_with_anything_else_is_refused_and_spent(
    store: Ephemeral, clock: Clock, client_id: str, redirect_uri: str | None, verifier: str | None, reason: str
):
    codes = AuthorizationCodes(store, clock=clock)
    code = await codes.issue(REQUEST, "alice", ("crm.read",), "users")
    with pytest.raises(OAuthError) as refused:
        await codes.redeem(code, client_id=client_id, redirect_uri=redirect_uri, verifier=verifier)
    assert (refused.value.error, refused.value.reason) == ("invalid_grant", reason)
    # One try: the right values afterwards get nothing either.
    with pytest.raises(CodeReplayed):
        await codes.redeem(code, client_id=CLIENT, redirect_uri=LOOPBACK, verifier=VERIFIER)


async def test_a_code_expires_after_sixty_seconds_and_an_unknown_code_is_refused(store: Ephemeral, clock: Clock):
    codes = AuthorizationCodes(store, clock=clock)
    code = await codes.issue(REQUEST, "alice", ("crm.read",), "users")
    clock.now += 61
    with pytest.raises(OAuthError) as expired:
        await codes.redeem(code, client_id=CLIENT, redirect_uri=LOOPBACK, verifier=VERIFIER)
    assert expired.value.reason == "code_expired"
    with pytest.raises(OAuthError) as unknown:
        await codes.redeem("not-a-code", client_id=CLIENT, redirect_uri=LOOPBACK, verifier=VERIFIER)
    assert unknown.value.reason == "unknown_code"


async def test_a_take_that_marks_leaves_no_moment_with_neither(store: Ephemeral):
    await store.put("code:x", "grant", 60)
    assert await store.take_marking("code:x", "spent:x", 60) == "grant"
    assert await store.get("spent:x") == "1" and await store.take_marking("code:x", "spent:y", 60) is None
    assert await store.get("spent:y") is None  # nothing taken, nothing marked


async def test_a_bounded_list_keeps_its_newest_items(store: Ephemeral):
    for n in range(5):
        await store.append("approvals", f"a{n}", 60, keep=3)
    assert await store.items("approvals") == ["a2", "a3", "a4"]


async def test_a_flood_of_one_kind_never_evicts_another(clock: Clock):
    store = MemoryEphemeral(clock=clock, limit=3)
    await store.put("client:dcr_1", "registered", 3600)
    for n in range(10):
        await store.put(f"pending:{n}", "held", 600)
    assert await store.get("client:dcr_1") == "registered"
    assert await store.get("pending:0") is None and await store.get("pending:9") == "held"


async def test_two_replicas_sharing_the_records_see_one_redemption(store: Ephemeral, clock: Clock):
    """Two token-service replicas (two AuthorizationCodes on one store): the code works on either, once."""
    first, second = AuthorizationCodes(store, clock=clock), AuthorizationCodes(store, clock=clock)
    code = await first.issue(REQUEST, "alice", ("crm.read",), "users")
    await second.redeem(code, client_id=CLIENT, redirect_uri=LOOPBACK, verifier=VERIFIER)
    with pytest.raises(CodeReplayed):
        await first.redeem(code, client_id=CLIENT, redirect_uri=LOOPBACK, verifier=VERIFIER)


async def test_a_pending_request_moves_on_only_in_its_browser_and_is_decided_once(store: Ephemeral, clock: Clock):
    sign_ins = SignIns(store, clock=clock)
    browser = new_browser()
    key, pending = await sign_ins.hold(REQUEST, "Test IDE", browser)
    assert await sign_ins.pending(key, new_browser()) is None and await sign_ins.pending(key, None) is None
    assert await sign_ins.pending(key, browser) == pending
    assert await sign_ins.decided(key, new_browser()) is None  # a wrong browser does not spend it
    assert await sign_ins.decided(key, browser) == pending
    assert await sign_ins.decided(key, browser) is None


async def test_a_session_is_found_by_its_cookie_until_it_ends_or_expires(store: Ephemeral, clock: Clock):
    sign_ins = SignIns(store, clock=clock)
    cookie, signed_in = await sign_ins.start("alice", ("crm.read",), "users", ttl=3600)
    assert await sign_ins.session(cookie) == signed_in and await sign_ins.session("forged") is None
    clock.now += 3601
    assert await sign_ins.session(cookie) is None
    cookie, _ = await sign_ins.start("alice", ("crm.read",), "users", ttl=3600)
    await sign_ins.end(cookie)
    assert await sign_ins.session(cookie) is None


async def test_a_providers_answer_is_good_once_and_only_in_the_browser_that_left(store: Ephemeral, clock: Clock):
    sign_ins = SignIns(store, clock=clock)
    browser = new_browser()
    state, federation = await sign_ins.federate("request-key", browser)
    assert await sign_ins.federated(state, browser) == federation
    assert await sign_ins.federated(state, browser) is None
    state, _ = await sign_ins.federate("request-key", browser)
    assert await sign_ins.federated(state, new_browser()) is None


async def test_a_registration_is_known_with_its_secret_hash_only(store: Ephemeral, clock: Clock):
    registrations = Registrations(store, clock=clock)
    registered, secret = await registrations.register((LOOPBACK,), "Old client", "client_secret_basic")
    found = await registrations.get(registered.document.client_id)
    assert found == registered and secret is not None and secret not in str(found)
    assert secret_matches(found, secret) and not secret_matches(found, "guess")
    assert await registrations.get("dcr_unknown") is None and await registrations.get(CLIENT) is None
