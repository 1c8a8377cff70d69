"""An audit sink that keeps what it is given: the AuditSink Protocol in memory, for apps tested without sockets."""

from __future__ import annotations

from gateway.audit.events import AuditEvent


class ListSink:
    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.healthy = True
        self.problem: str | None = None

    def emit(self, event: AuditEvent) -> bool:
        self.events.append(event)
        return True

    def named(self, name: str) -> list[AuditEvent]:
        return [event for event in self.events if event.event == name]

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
