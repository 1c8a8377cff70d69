"""A person in a real browser (headless Chromium, driven by selenium): they open the client's sign-in link, sign
in, read the consent page, approve, and the browser lands on the client's loopback redirect with a code the
client redeems. Then the same with Deny, and a framed page the browser refuses to show."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx2
import pytest
import uvicorn
from argon2 import PasswordHasher
from people_support import pkce
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from support import Gateway, Upstream, free_port, serve_in_thread, start_gateway

PASSWORD = "browser-password-42"


class ClientApp:
    """The client's side on loopback: its metadata document and the callback page the browser lands on."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = f"{self.url}/client.json"
        self.callback = f"{self.url}/callback"
        self.landed: list[dict[str, list[str]]] = []
        self.arrived = threading.Event()

    def app(self) -> Starlette:
        async def document(request: Request) -> Response:
            return JSONResponse(
                {"client_id": self.client_id, "client_name": "Browser Test Client", "redirect_uris": [self.callback]}
            )

        async def callback(request: Request) -> Response:
            self.landed.append(parse_qs(request.url.query))
            self.arrived.set()
            return HTMLResponse("<h1>You can go back to the app</h1>")

        return Starlette(routes=[Route("/client.json", document), Route("/callback", callback)])


@pytest.fixture(scope="module")
def client_app() -> Iterator[ClientApp]:
    client = ClientApp()
    config = uvicorn.Config(client.app(), host="127.0.0.1", port=client.port, log_level="warning")
    stop = serve_in_thread(uvicorn.Server(config), "client app")
    yield client
    stop()


@pytest.fixture(scope="module")
def gw(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(
        tmp_path_factory.mktemp("interactive-browser"),
        upstream.url,
        extra={
            "login": {"users": {"bob": {"password_hash": PasswordHasher().hash(PASSWORD), "scopes": ["crm.read"]}}},
            "interactive": {"scopes": ["crm.read"]},
        },
    )
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail("no chromedriver: `make browser` installs chromium and chromium-driver (make test does)")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def sign_in_link(gw: Gateway, client: ClientApp, challenge: str) -> str:
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": client.callback,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "browser-state",
        "scope": "crm.read",
    }
    return f"{gw.issuer_url}/oauth/authorize?{urlencode(query)}"


def landed(client: ClientApp) -> dict[str, list[str]]:
    assert client.arrived.wait(20), "the browser never reached the client's callback"
    client.arrived.clear()
    return client.landed.pop()


def test_a_person_signs_in_and_approves_in_a_real_browser(
    browser: webdriver.Chrome, gw: Gateway, client_app: ClientApp
):
    verifier, challenge = pkce()
    browser.delete_all_cookies()
    browser.get(sign_in_link(gw, client_app, challenge))
    assert "Browser Test Client" in browser.page_source
    browser.find_element(By.NAME, "username").send_keys("bob")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda b: "Allow Browser Test Client?" in b.page_source)
    assert "crm.read" in browser.page_source and "bob" in browser.page_source
    browser.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
    query = landed(client_app)
    assert query["state"] == ["browser-state"] and query["iss"] == [gw.issuer_url]
    WebDriverWait(browser, 20).until(lambda b: urlsplit(b.current_url).path == "/callback")
    token = httpx2.post(
        f"{gw.issuer_url}/oauth/token",
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "client_id": client_app.client_id,
            "redirect_uri": client_app.callback,
            "code_verifier": verifier,
        },
    )
    assert token.status_code == 200, token.text
    answer = httpx2.get(
        f"{gw.proxy_url}/v1/on-behalf", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )
    assert answer.status_code == 200, answer.text


def test_deny_in_a_real_browser_lands_with_access_denied_and_no_code(
    browser: webdriver.Chrome, gw: Gateway, client_app: ClientApp
):
    _, challenge = pkce()
    # Still signed in from the test before (the session cookie): straight to the consent page.
    browser.get(sign_in_link(gw, client_app, challenge))
    if "Sign in" in browser.title:
        browser.find_element(By.NAME, "username").send_keys("bob")
        browser.find_element(By.NAME, "password").send_keys(PASSWORD)
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 20).until(lambda b: "Allow Browser Test Client?" in b.page_source)
    browser.find_element(By.CSS_SELECTOR, "button[value=deny]").click()
    query = landed(client_app)
    assert query["error"] == ["access_denied"] and "code" not in query


def test_the_browser_refuses_to_show_the_pages_in_a_frame(
    browser: webdriver.Chrome, gw: Gateway, client_app: ClientApp
):
    _, challenge = pkce()
    framing = f"data:text/html,<iframe id=f src='{sign_in_link(gw, client_app, challenge)}'></iframe>"
    browser.get(framing)
    frame = browser.find_element(By.ID, "f")
    browser.switch_to.frame(frame)
    # frame-ancestors 'none' / X-Frame-Options DENY: the framed document is an error page, never the form.
    assert not browser.find_elements(By.NAME, "password")
    browser.switch_to.default_content()
