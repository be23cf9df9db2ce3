"""Copy resume records in Redis: one hash per file of a migration, so a copy worker killed
at any moment leaves behind which chunks already landed, and the redelivered task resumes.

The key and its lifetime are in `workers.model.keys.copy_resume`; what a record means is
in `workers.smb.resume`.
"""
from __future__ import annotations

import json
from typing import cast

import redis

from workers.model import keys


class RedisResumeRecord:
    def __init__(self, client: redis.Redis, mid: str, dest_path: str):
        self.r = client
        self.key = keys.copy_resume(mid, dest_path)

    def load(self, identity: dict) -> dict[int, str]:
        wanted = json.dumps(identity, sort_keys=True)
        stored = cast("dict[str, str]", self.r.hgetall(self.key))
        if stored.get("identity") != wanted:
            pipe = self.r.pipeline()
            pipe.delete(self.key)
            pipe.hset(self.key, mapping={"identity": wanted, "sent": stored.get("sent", 0)})
            pipe.expire(self.key, keys.COPY_RESUME_TTL_S)
            pipe.execute()
            return {}
        self.r.expire(self.key, keys.COPY_RESUME_TTL_S)
        return {int(k[2:]): v for k, v in stored.items() if k.startswith("c:")}

    def will_write(self, nbytes: int) -> None:
        self.r.hincrby(self.key, "sent", nbytes)

    def record(self, index: int, digest: str) -> None:
        self.r.hset(self.key, f"c:{index}", digest)

    def bytes_sent(self) -> int:
        return int(self.r.hget(self.key, "sent") or 0)

    def clear(self) -> None:
        self.r.delete(self.key)
