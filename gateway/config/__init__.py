"""The YAML configuration: typed models (models.py, values.py), loading (load.py), problems for people (messages.py).

Other modules import from here, not from the parts.
"""

from gateway.config.load import LoadedConfig, expand_env, load_config
from gateway.config.messages import ConfigError
from gateway.config.models import (
    HTTP_METHODS,
    AdminConfig,
    AgentConfig,
    ApprovalsConfig,
    AuditConfig,
    AuthFailureLimits,
    Config,
    InteractiveConfig,
    IssuerConfig,
    LoginConfig,
    LoginOidcConfig,
    LoginUserConfig,
    McpConfig,
    McpPromptRule,
    McpResourceRule,
    McpToolRule,
    ProxyConfig,
    RedisConfig,
    RouteConfig,
    TlsConfig,
    TrustedIssuerConfig,
    UpstreamConfig,
    config_schema,
)
from gateway.config.values import RateLimit, parse_byte_size, parse_duration, parse_rate_limit

__all__ = [
    "HTTP_METHODS",
    "AdminConfig",
    "AgentConfig",
    "ApprovalsConfig",
    "AuditConfig",
    "AuthFailureLimits",
    "Config",
    "ConfigError",
    "InteractiveConfig",
    "IssuerConfig",
    "LoadedConfig",
    "LoginConfig",
    "LoginOidcConfig",
    "LoginUserConfig",
    "McpConfig",
    "McpPromptRule",
    "McpResourceRule",
    "McpToolRule",
    "ProxyConfig",
    "RateLimit",
    "RedisConfig",
    "RouteConfig",
    "TlsConfig",
    "TrustedIssuerConfig",
    "UpstreamConfig",
    "config_schema",
    "expand_env",
    "load_config",
    "parse_byte_size",
    "parse_duration",
    "parse_rate_limit",
]
