"""Who is calling: the verified identity behind a token, as the rest of the pipeline sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified access token, reduced to what authorization, stamping and audit need.

    `agent` is the client that holds the token (`client_id`); `subject` is whom it acts for
    (`sub`: the agent itself for a direct token, the user or org for a delegated one).
    `delegation` lists the actors from the `act` claim, outermost (most recent) first.
    """

    agent: str
    subject: str
    scopes: frozenset[str]
    jti: str
    issuer: str
    expires_at: float
    issued_at: float
    delegation: tuple[str, ...] = ()
    # The jtis of the tokens this one was exchanged from, oldest first: revoking any of them revokes this one.
    ancestors: tuple[str, ...] = ()
    claims: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def delegated(self) -> bool:
        return bool(self.delegation)
