"""Per-process handles a task needs: config, Redis store, locks, drivers, SMB endpoints.

Created lazily in the process that uses them and dropped after a fork, so no socket is
ever shared between a Celery parent and its children.
"""
from __future__ import annotations

from functools import lru_cache

import redis

from workers import config as config_mod
from workers.locks import VMLocks
from workers.record import Store


@lru_cache(maxsize=1)
def config() -> config_mod.Config:
    return config_mod.load_config()


def new_redis() -> redis.Redis:
    """A client of its own, for a thread that must not share this process's cached one."""
    return redis.Redis.from_url(config().redis_url, decode_responses=True, socket_timeout=30,
                                socket_connect_timeout=10, health_check_interval=30)


@lru_cache(maxsize=1)
def _redis() -> redis.Redis:
    return new_redis()


def store() -> Store:
    return Store(_redis())


def locks() -> VMLocks:
    return VMLocks(_redis())


def admission():
    from workers.admission import Admission
    return Admission.of(_redis(), config())


@lru_cache(maxsize=None)
def driver(host: str):
    from workers.hyperv.driver import HyperVDriver
    cfg = config()
    return HyperVDriver(cfg.host(host), cfg.credentials(host))


@lru_cache(maxsize=None)
def smb_endpoint(host: str):
    from workers.smb.copy import SmbEndpoint
    cfg = config()
    h, c = cfg.host(host), cfg.credentials(host)
    return SmbEndpoint(h.smb_server, h.smb_port, h.smb_share, c.smb_username, c.smb_password)


def reset() -> None:
    for f in (config, _redis, driver, smb_endpoint):
        f.cache_clear()
    try:
        from workers.smb import copy as smb_copy
        smb_copy.reset_connections()
    except ImportError:
        pass
