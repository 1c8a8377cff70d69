# Tollbooth's image: the wheel is built in one stage and installed into a virtualenv, and only that virtualenv
# reaches the runtime stage (no compiler, no pip cache, no source tree, no keys). Build and run: docs/deploying.md.
# No `# syntax=` line: the builder's own frontend parses this file, so a build fetches the base image and PyPI
# packages and nothing else (offline and mirrored build hosts). The base is pinned to a patch release.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The build context is only what the wheel needs (.dockerignore allows these and nothing else).
COPY pyproject.toml README.md constraints.txt ./
COPY gateway ./gateway
# constraints.txt pins every runtime dependency (`make constraints` writes it): a rebuild installs the same versions.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/tollbooth \
 && /opt/tollbooth/bin/pip install --constraint constraints.txt /wheels/tollbooth-*.whl

FROM ${PYTHON_IMAGE} AS runtime
# The virtualenv's scripts name /opt/tollbooth/bin/python: it must sit at the same path as in the builder.
COPY --from=builder /opt/tollbooth /opt/tollbooth
# A numeric user, so that Kubernetes' runAsNonRoot can check it without a passwd lookup. The one writable
# directory, /var/lib/tollbooth, is a volume: keys generated on first start, the audit file, the audit spool
# and the revocations journal all live there (config/container.yaml), so the root filesystem can be read-only.
# The empty keys directory makes a named volume mounted on it start out owned by that user.
RUN groupadd --system --gid 10001 tollbooth \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tollbooth --no-create-home \
        --shell /usr/sbin/nologin tollbooth \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/tollbooth /var/lib/tollbooth/keys \
 && install -d -m 0755 /etc/tollbooth
ENV PATH=/opt/tollbooth/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TOLLBOOTH_CONFIG=/etc/tollbooth/tollbooth.yaml \
    TOLLBOOTH_ADMIN_PORT=9090
VOLUME ["/var/lib/tollbooth"]
# Relative paths in a mounted config (the defaults are under .tollbooth/) land in the volume too.
WORKDIR /var/lib/tollbooth
USER 10001:10001
# proxy, issuer (token service), admin (/metrics, /healthz, /readyz), as in config/container.yaml.
EXPOSE 8080 8081 9090
# The slim image has no curl: ask the admin listener with the virtualenv's Python (urlopen raises on non-2xx).
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/opt/tollbooth/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TOLLBOOTH_ADMIN_PORT', '9090') + '/healthz', timeout=2)"]
ENTRYPOINT ["tollbooth"]
CMD ["serve", "--config", "/etc/tollbooth/tollbooth.yaml"]
