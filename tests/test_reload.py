"""ConfigWatcher without a running gateway: edits on disk, `check()` called by the test, `apply` recorded.

The e2e tests reload a real process; these pin each outcome: applied, rejected (the last good config stays and the
reason is audited), unchanged, a routes file that moves, and restart-only settings named rather than ignored.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import LoadedConfig, load_config
from gateway.reload import ConfigWatcher, restart_only_changes
from tests.list_sink import ListSink

pytestmark = pytest.mark.anyio

BASE = """version: 1
upstreams: {crm: {url: 'http://127.0.0.1:9'}}
routes_file: routes.yaml
"""
ROUTE = "  - {{name: {name}, methods: [GET], path: /v1/{name}, scopes: [crm.read]}}\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def routes(*names: str) -> str:
    return "routes:\n" + "".join(ROUTE.format(name=name) for name in names)


class Watched:
    def __init__(self, tmp: Path) -> None:
        self.config_path = tmp / "tollbooth.yaml"
        self.config_path.write_text(BASE)
        (tmp / "routes.yaml").write_text(routes("customers"))
        self.applied: list[LoadedConfig] = []
        self.audit = ListSink()
        self.watcher = ConfigWatcher(load_config(self.config_path, env={}), self.applied.append, self.audit)

    def route_names(self) -> list[str]:
        return [route.name for route in self.watcher.current.config.routes]


@pytest.fixture
def watched(tmp_path: Path) -> Watched:
    return Watched(tmp_path)


async def test_nothing_changed_applies_nothing(watched: Watched) -> None:
    assert await watched.watcher.check() is None
    assert watched.applied == [] and watched.audit.events == []


async def test_a_valid_edit_is_applied_and_audited(watched: Watched, tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(routes("customers", "invoices"))
    assert await watched.watcher.check() is True
    assert [route.name for route in watched.applied[0].config.routes] == ["customers", "invoices"]
    assert watched.route_names() == ["customers", "invoices"]
    [event] = watched.audit.named("config.reloaded")
    assert event.reason == "2 routes"


async def test_a_bad_edit_keeps_the_last_good_config_and_names_the_problem(watched: Watched, tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(routes("customers") + "  - {name: broken, methods: [FETCH], path: /x}\n")
    assert await watched.watcher.check() is False
    assert watched.applied == []
    assert watched.route_names() == ["customers"]
    [event] = watched.audit.named("config.rejected")
    assert "routes.yaml" in event.reason and "broken" in event.reason and "methods" in event.reason
    # The same bad content is not re-reported every second; the fix is noticed and applied.
    assert await watched.watcher.check() is None
    (tmp_path / "routes.yaml").write_text(routes("customers", "fixed"))
    assert await watched.watcher.check() is True
    assert watched.route_names() == ["customers", "fixed"]


async def test_a_renamed_routes_file_is_watched_from_then_on(watched: Watched, tmp_path: Path) -> None:
    (tmp_path / "more-routes.yaml").write_text(routes("first"))
    watched.config_path.write_text(BASE.replace("routes.yaml", "more-routes.yaml"))
    assert await watched.watcher.check() is True
    (tmp_path / "more-routes.yaml").write_text(routes("first", "second"))
    assert await watched.watcher.check() is True
    assert watched.route_names() == ["first", "second"]


def test_restart_only_settings_are_named(tmp_path: Path) -> None:
    (tmp_path / "routes.yaml").write_text(routes("customers"))
    (tmp_path / "a.yaml").write_text(BASE + "proxy: {listen: '127.0.0.1:8080'}\n")
    (tmp_path / "b.yaml").write_text(BASE + "proxy: {listen: '127.0.0.1:8090'}\n")
    old, new = load_config(tmp_path / "a.yaml", env={}), load_config(tmp_path / "b.yaml", env={})
    assert restart_only_changes(old.config, new.config) == ["proxy.listen"]
    assert restart_only_changes(old.config, old.config) == []
