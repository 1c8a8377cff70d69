"""`helm test`: the release answers from inside the cluster. Run with the image's Python, standard library only.

PROXY_URL: the proxy's Service; RESOURCE and ISSUER: config.proxy.public_url and config.issuer.url, which the
proxy's RFC 9728 metadata must name; READYZ_URLS: every admin listener's /readyz, space-separated.
"""

import json
import os
import sys
import urllib.error
import urllib.request


def get(url: str) -> bytes:
    # urlopen raises HTTPError on any status >= 400, so an unready pod (503) fails here.
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (http URLs of this release's Services)
        return response.read()


def main() -> int:
    failures = []
    metadata_url = os.environ["PROXY_URL"].rstrip("/") + "/.well-known/oauth-protected-resource"
    try:
        metadata = json.loads(get(metadata_url))
        if metadata.get("resource", "").rstrip("/") != os.environ["RESOURCE"].rstrip("/"):
            failures.append(f"{metadata_url}: resource is {metadata.get('resource')!r}, not {os.environ['RESOURCE']!r}")
        servers = [server.rstrip("/") for server in metadata.get("authorization_servers", [])]
        if os.environ["ISSUER"].rstrip("/") not in servers:
            failures.append(f"{metadata_url}: authorization_servers {servers} lacks {os.environ['ISSUER']!r}")
    except (OSError, ValueError) as exc:
        failures.append(f"{metadata_url}: {exc}")
    for url in os.environ["READYZ_URLS"].split():
        try:
            get(url)
        except urllib.error.HTTPError as exc:
            failures.append(f"{url}: {exc.code} {exc.read().decode(errors='replace')}")
        except OSError as exc:
            failures.append(f"{url}: {exc}")
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print("ok: metadata and readiness" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
