"""One audit event written before returning, for the CLI's own actions (an operator's `tollbooth revoke`): no
queue, no spool, so a failure is the caller's to report."""

from __future__ import annotations

import os

from gateway.audit.events import AuditEvent, encode_event
from gateway.config import AuditConfig
from gateway.redis.connect import sync_client


def record_event(redis_url: str, audit: AuditConfig, event: AuditEvent) -> None:
    """Append `event` to the audit stream (with `redis.url`) or the audit file; raises what the write raised."""
    if redis_url:
        client = sync_client(redis_url, socket_timeout=5, socket_connect_timeout=5)
        try:
            client.xadd(audit.stream, event.to_fields(), maxlen=audit.max_len, approximate=True)  # type: ignore[arg-type]
        finally:
            client.close()
        return
    # O_APPEND: one write of one line lands whole after whatever the gateway's own writer appended.
    fd = os.open(audit.file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, encode_event(event))
    finally:
        os.close(fd)
