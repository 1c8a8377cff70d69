"""Hot reload through a Kubernetes ConfigMap volume: the files change by a symlink swap, never in place.

The kubelet's atomic writer lays a ConfigMap volume out as

    tollbooth.yaml -> ..data/tollbooth.yaml
    routes.yaml    -> ..data/routes.yaml
    ..data         -> ..2026_11_25_15_49_49.1234567890     (a timestamped directory holding the files)

and applies an update by writing a new timestamped directory, renaming a new `..data` symlink over the old
one (atomic), then deleting the old directory. A watcher that holds on to the old directory's files, or only
to inotify events on them, misses the update; these tests run a real gateway on such a layout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from support import DEFAULT_ROUTES, Gateway, Upstream, start_gateway, wait_until

FILES = ("tollbooth.yaml", "routes.yaml")


class ConfigMapVolume:
    """A directory updated the way the kubelet updates a mounted ConfigMap (pkg/volume/util/atomic_writer.go)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.publish({name: "" for name in FILES})
        for name in FILES:
            (root / name).symlink_to(Path("..data") / name)

    def current(self) -> Path:
        return self.root / os.readlink(self.root / "..data")

    def publish(self, files: dict[str, str]) -> None:
        old = self.current() if (self.root / "..data").is_symlink() else None
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        new = Path(tempfile.mkdtemp(prefix=stamp, dir=self.root))
        for name, text in files.items():
            (new / name).write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(new.name)
        link.replace(self.root / "..data")
        if old is not None:
            shutil.rmtree(old)

    def edit(self, name: str, text: str) -> None:
        """Publish a new version in which one file changes and the others stay as they are."""
        contents = {other: (self.root / "..data" / other).read_text() for other in FILES}
        self.publish({**contents, name: text})


def routes_yaml(get_customer_scopes: list[str]) -> str:
    routes: list[dict[str, Any]] = [
        {**route, "scopes": get_customer_scopes} if route["name"] == "get-customer" else route
        for route in DEFAULT_ROUTES
    ]
    return yaml.safe_dump({"routes": routes})


@pytest.fixture
def mounted(upstream: Upstream, tmp_path: Path) -> Iterator[tuple[Gateway, ConfigMapVolume]]:
    # start_gateway writes its config and routes through the symlinks, into the first timestamped directory.
    volume = ConfigMapVolume(tmp_path)
    gw = start_gateway(tmp_path, upstream.url)
    assert (tmp_path / "routes.yaml").is_symlink() and (volume.current() / "routes.yaml").read_text()
    yield gw, volume
    gw.stop()


def status_with(gw: Gateway, token: str) -> int:
    return httpx2.get(f"{gw.proxy_url}/v1/customers/42", headers={"Authorization": f"Bearer {token}"}).status_code


def same_process(gw: Gateway, event: dict[str, str]) -> None:
    assert gw.process.poll() is None, "the gateway restarted or died"
    assert event["instance"].endswith(f":{gw.process.pid}"), "the reload happened in another process"


def test_configmap_swap_changes_enforcement_without_restart(mounted: tuple[Gateway, ConfigMapVolume]):
    gw, volume = mounted
    reader = gw.mint("crm.read")
    assert status_with(gw, reader) == 200

    volume.edit("routes.yaml", routes_yaml(["crm.write"]))

    wait_until(lambda: status_with(gw, reader) == 403, what="the new scope rule enforced")
    same_process(gw, gw.wait_audit(lambda e: e["event"] == "config.reloaded"))
    assert status_with(gw, gw.mint("crm.write")) == 200


def test_invalid_configmap_edit_keeps_last_good_config_and_a_fix_still_applies(
    mounted: tuple[Gateway, ConfigMapVolume],
):
    gw, volume = mounted
    reader = gw.mint("crm.read")

    volume.edit("routes.yaml", "routes:\n  - name: get-customer\n    path: /v1/customers/{id}\n    methds: [GET]\n")

    rejected = gw.wait_audit(lambda e: e["event"] == "config.rejected", what="the broken edit rejected")
    assert "methds" in rejected["reason"]
    # The error names the file as the operator knows it, not the kubelet's timestamped directory.
    assert str(volume.root / "routes.yaml") in rejected["reason"] and "..20" not in rejected["reason"]
    same_process(gw, rejected)
    assert status_with(gw, reader) == 200  # the last good rule (crm.read) is still in force

    # The next valid version arrives the same way, after the directory the gateway last read is gone.
    volume.edit("routes.yaml", routes_yaml(["crm.write"]))
    wait_until(lambda: status_with(gw, reader) == 403, what="the fixed edit applied")
    same_process(gw, gw.wait_audit(lambda e: e["event"] == "config.reloaded"))
