"""The agent side of Tollbooth: get, present, refresh and revoke tokens.

from gateway.client import TollboothAuth
auth = TollboothAuth("billing-bot", proxy_url="http://127.0.0.1:8080", private_key="billing-bot.pem")
httpx2.get("http://127.0.0.1:8080/v1/customers", auth=auth)
"""

from gateway.client.agent_keys import generate_agent_key
from gateway.client.auth import TollboothAuth
from gateway.client.errors import (
    DiscoveryError,
    InsufficientScope,
    ProtocolError,
    TokenRequestError,
    TollboothError,
)

__all__ = [
    "DiscoveryError",
    "InsufficientScope",
    "ProtocolError",
    "TokenRequestError",
    "TollboothAuth",
    "TollboothError",
    "generate_agent_key",
]
