"""Open the online store that the configuration names."""

from __future__ import annotations

from pathlib import Path

from feedforge.config import StoreConfig
from feedforge.store.base import OnlineStore
from feedforge.store.embedded import EmbeddedStore
from feedforge.store.redis import RedisStore
from feedforge.store.redis_cluster import RedisClusterStore


def open_store(config: StoreConfig, default_path: Path) -> OnlineStore:
    """Open the backend picked by ``config.type``.

    Args:
        config: The ``store`` section of the settings.
        default_path: The embedded store's file when ``config.path`` is unset, normally
            :attr:`feedforge.workdir.Workdir.store_path`.

    Returns:
        An open store; close it (or use it as a context manager) when done. A Redis store
        connects lazily, so opening one never fails because the server is down: call
        :meth:`~feedforge.store.base.OnlineStore.ping` to check. A Redis Cluster store reads
        the slot map when opened.

    Raises:
        ConfigError: ``config.redis_url`` is not a Redis URL.
        StoreUnavailableError: ``redis-cluster`` and no node answers.
        StoreError: the embedded file cannot be opened or is not a feedforge store.
    """
    if config.type in ("redis", "redis-cluster"):
        backend = RedisStore if config.type == "redis" else RedisClusterStore
        return backend.from_url(
            config.redis_url,
            namespace=config.namespace,
            socket_timeout_s=config.socket_timeout_s,
            read_timeout_s=config.read_timeout_ms / 1000,
            history_ttl_s=None
            if config.history_ttl_days is None
            else config.history_ttl_days * 86_400,
        )
    return EmbeddedStore(config.path or default_path, namespace=config.namespace)
