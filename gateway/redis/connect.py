"""Connecting to Redis, whichever topology `redis.url` names (see gateway.redis.url): every Redis client of
Tollbooth is built here, from the URL and the caller's connection options (timeouts, retries, decoding).

- One server: redis-py's own URL handling.
- Sentinel: the client asks the Sentinels for the master's address each time it opens a connection, so after a
  failover new connections reach the new master. A connection still open to the old master fails (it is gone, or
  answers READONLY once demoted) and the caller's next attempt connects anew.
- Cluster: the client learns nodes and slots from the seed nodes and sends each command to its slot's node; a
  script's keys must share a slot (gateway.redis_slots).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.exceptions import RedisClusterException, RedisError

from gateway.redis.url import parse_redis_url

# What a client raises when Redis fails or cannot be reached. A Cluster that cannot be reached at all raises
# RedisClusterException, which is not a RedisError.
REDIS_FAILURES = (RedisError, RedisClusterException)

AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster
SyncClient = redis.Redis | redis.cluster.RedisCluster


class _AsyncSentinelMaster(redis.asyncio.Redis):
    """A Sentinel-managed master's client that also closes its connections to the Sentinels (redis-py leaves them
    to the Sentinel object, which nothing else here keeps)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        await self.connection_pool.sentinel_manager.aclose()  # type: ignore[attr-defined]


class _SentinelMaster(redis.Redis):
    """`_AsyncSentinelMaster` for blocking code."""

    def close(self) -> None:
        super().close()
        self.connection_pool.sentinel_manager.close()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class _Classes:
    """redis-py's classes for one way of waiting: asyncio or blocking."""

    server: Any
    cluster: Any
    cluster_node: Any
    sentinel: Any
    sentinel_master: Any


_ASYNC = _Classes(
    redis.asyncio.Redis,
    redis.asyncio.RedisCluster,
    AsyncClusterNode,
    redis.asyncio.sentinel.Sentinel,
    _AsyncSentinelMaster,
)
_BLOCKING = _Classes(
    redis.Redis, redis.cluster.RedisCluster, redis.cluster.ClusterNode, redis.sentinel.Sentinel, _SentinelMaster
)


def async_client(url: str, **options: Any) -> AsyncClient:
    """An asyncio client for `url`. `options` are redis-py connection options, the same for every topology."""
    return cast(AsyncClient, _client(_ASYNC, url, options))


def sync_client(url: str, **options: Any) -> SyncClient:
    """A blocking client for `url`. A Cluster client connects at once: it raises one of REDIS_FAILURES when none of
    the seed nodes answers."""
    return cast(SyncClient, _client(_BLOCKING, url, options))


def _client(classes: _Classes, url: str, options: dict[str, Any]) -> Any:
    target = parse_redis_url(url)
    if target.kind == "redis":
        return classes.server.from_url(url, **options)
    # redis-py's own URL parsing reads ssl_ca_certs & co. from a plain URL; here they are passed on by name.
    tls = {"ssl": target.tls, **dict(target.tls_files)}
    credentials = {"username": target.username, "password": target.password, **tls}
    if target.kind == "cluster":
        nodes = [classes.cluster_node(host, port) for host, port in target.nodes]
        return classes.cluster(startup_nodes=nodes, **credentials, **options)
    sentinels = classes.sentinel(
        list(target.nodes),
        sentinel_kwargs={  # the Sentinels speak TLS with the same CA and client certificate as the master
            **{name: value for name, value in options.items() if name.startswith("socket_")},
            "username": target.sentinel_username,
            "password": target.sentinel_password,
            **tls,
        },
    )
    return sentinels.master_for(
        target.master, redis_class=classes.sentinel_master, db=target.db, **credentials, **options
    )


async def subscriber(client: AsyncClient) -> PubSub:
    """A pub/sub connection of `client`. On Cluster, to a random node: a PUBLISH reaches the subscribers of every
    node (the cluster bus relays it), and after a node fails the next attempt most likely picks another."""
    if isinstance(client, redis.asyncio.RedisCluster):
        await client.initialize()
        return client.pubsub(node=random.choice(client.get_nodes()))  # noqa: S311 (spreading load, not a secret)
    return client.pubsub()
