"""Per-process handles a task needs: config, Redis store, locks, drivers, SMB endpoints.

Created lazily in the process that uses them and dropped after a fork, so no socket is
ever shared between a Celery parent and its children.
"""
from __future__ import annotations

from functools import cache, lru_cache

import redis

from workers.coord.admission import Admission
from workers.coord.locks import VMLocks
from workers.hyperv.driver import HyperVDriver
from workers.model import config as config_mod
from workers.model.record import CLIENT_OPTIONS, Store
from workers.smb.connections import reset_connections
from workers.smb.endpoint import SmbEndpoint


@lru_cache(maxsize=1)
def config() -> config_mod.Config:
    return config_mod.load_config()


def new_redis() -> redis.Redis:
    """A client of its own, for a thread that must not share this process's cached one."""
    return config().redis_client(**CLIENT_OPTIONS)


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return new_redis()


def store() -> Store:
    return Store(_redis(), config().events.max_entries)


def locks() -> VMLocks:
    # under Sentinel a destructive step waits until the replica has the state that led to it
    return VMLocks(_redis(), replicas=1 if config().redis_sentinels() else 0)


def admission() -> Admission:
    return Admission.of(_redis(), config())


@cache
def driver(host: str) -> HyperVDriver:
    cfg = config()
    return HyperVDriver(cfg.host(host), cfg.credentials(host))


@cache
def smb_endpoint(host: str) -> SmbEndpoint:
    cfg = config()
    return SmbEndpoint.for_host(cfg.host(host), cfg.credentials(host))


def reset() -> None:
    for f in (config, _redis, driver, smb_endpoint):
        f.cache_clear()
    reset_connections()
