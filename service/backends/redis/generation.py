"""Which index generation a Redis deployment serves, as every gateway and worker reads it.

- `<prefix>:generation` (HASH: `tag`, `name`, `checkpoint_sha256`, `embed_dim`, `checkpoint_path`) is
  written by the switch of an online reindex (service/backends/redis/reindex.py). Absent: the deployment
  still serves its first generation (tag ""), whose checkpoint is the one every process was started with.
- `<prefix>:reindex` (HASH) is the online reindex's state; while its `state` is `running`, its `tag` names
  the generation being filled.

A generation's vectors, with FAISS replicas in the gateways, travel on its own stream: `<prefix>:vectors`
for the first, `<prefix>:vectors:<tag>` for a later one (`vectors_key`). The catalog's writers read the
current tag under the catalog lock at every write (`RedisVectorLog`, `MilvusChangeLog`), so a write made
after the switch goes to the new generation, whichever generation the writing process still searches.
"""

from __future__ import annotations

import redis

from service.generations import CheckpointIdentity, CheckpointMismatch


def vectors_key(prefix: str, tag: str) -> str:
    """The vector stream of generation `tag` ("" : the first)."""
    return f"{prefix}:vectors:{tag}" if tag else f"{prefix}:vectors"


def _s(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class DeploymentGenerations:
    """Reads of `<prefix>:generation` and of the running reindex's target."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.r = client
        self.prefix = prefix
        self.key = f"{prefix}:generation"
        self.reindex_key = f"{prefix}:reindex"

    def current(self) -> tuple[str, CheckpointIdentity | None]:
        """(tag, the identity of its checkpoint); ("", None) while the first generation is served."""
        raw = {_s(k): _s(v) for k, v in self.r.hgetall(self.key).items()}
        return raw.get("tag", ""), CheckpointIdentity.from_metadata(raw)

    def current_tag(self) -> str:
        return _s(self.r.hget(self.key, "tag"))

    def live_tags(self) -> list[str]:
        """The current generation's tag and, while a reindex runs, its target's: where a delete goes."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(self.key, "tag")
            pipe.hmget(self.reindex_key, "state", "tag")
            current, (state, target) = pipe.execute()
        tags = [_s(current)]
        if _s(state) == "running" and _s(target) not in tags:
            tags.append(_s(target))
        return tags

    def check(self, identity: CheckpointIdentity) -> None:
        """`CheckpointMismatch` when an online reindex switched the deployment to another checkpoint than
        `identity` (a process started with the old one after the switch)."""
        _tag, recorded = self.current()
        if recorded is not None and recorded.sha256 != identity.sha256:
            raise CheckpointMismatch(
                f"this Redis deployment ({self.prefix}) serves vectors of checkpoint {recorded.describe()} since "
                f"an online reindex, but this process was started with {identity.describe()}; start it with "
                f"--checkpoint {recorded.path}")
