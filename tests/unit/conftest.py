"""Unit-test fixtures: a clean database on the session's real redis-server."""
import pytest
import redis


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
