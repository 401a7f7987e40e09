"""SQLite metadata store: uniqueness, lookups, paging, status life cycle, jobs, threads."""

from __future__ import annotations

import hashlib
import inspect
import threading

import pytest

from service.backends.redis.store import RedisMetadataStore
from service.backends.sqlite import SQLiteMetadataStore
from service.backends.store import DuplicateContent, InvalidTransition, Label, MetadataStore, NotFound


def h(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


@pytest.fixture
def store(tmp_path):
    s = SQLiteMetadataStore(tmp_path / "meta.db")
    yield s
    s.close()


def _protocol_methods() -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(MetadataStore).items()
            if callable(fn) and not name.startswith("_")}


@pytest.mark.parametrize("impl", [SQLiteMetadataStore, RedisMetadataStore])
def test_implements_the_metadata_store_protocol(impl):
    """Both stores have every method of the protocol with the same parameters (names, kinds, defaults), so
    the catalog can use either one."""
    methods = _protocol_methods()
    assert len(methods) >= 14 and "create_video" in methods and "set_job_status" in methods
    for name, want in methods.items():
        fn = getattr(impl, name, None)
        assert callable(fn), f"{impl.__name__} has no {name}"
        got = inspect.signature(fn)
        assert [(p.name, p.kind, p.default) for p in got.parameters.values()] == \
            [(p.name, p.kind, p.default) for p in want.parameters.values()], (impl.__name__, name, got, want)


def test_create_lookup_and_uniqueness(store, tmp_path):
    v = store.create_video(h(1), external_id="ext-1", source_name="a.mp4", duration=3.5, extra={"fps": 25})
    assert v.status == "pending" and v.created_at > 0 and v.extra == {"fps": 25}
    assert store.find_by_hash(h(1)) == v == store.find_by_external_id("ext-1") == store.get_video(v.video_id)
    assert store.find_by_hash(h(2)) is None
    with pytest.raises(DuplicateContent):
        store.create_video(h(1))
    with pytest.raises(DuplicateContent):
        store.create_video(h(2), external_id="ext-1")
    with pytest.raises(ValueError):
        store.create_video("not-a-hash")
    with pytest.raises(NotFound):
        store.get_video(999)
    reopened = SQLiteMetadataStore(tmp_path / "meta.db")
    assert reopened.get_video(v.video_id) == v
    reopened.close()


def test_labels_status_and_paging(store):
    ids = [store.create_video(h(i)).video_id for i in range(12)]
    v = store.update_video(ids[0], labels=[Label("dance", 0.9), Label("run", 0.05)], extra={"k": 1})
    assert v.labels == [Label("dance", 0.9), Label("run", 0.05)] and v.extra == {"k": 1}
    store.set_status(ids[0], "processing")
    assert store.set_status(ids[0], "indexed").status == "indexed"
    store.set_status(ids[1], "processing")
    assert store.set_status(ids[1], "failed", error="decode error").error == "decode error"
    with pytest.raises(InvalidTransition):
        store.set_status(ids[2], "indexed")  # pending -> indexed skips processing
    page1 = store.list_videos(limit=5)
    page3 = store.list_videos(offset=10, limit=5)
    assert [x.video_id for x in page1] == ids[:5] and [x.video_id for x in page3] == ids[10:]
    assert [x.video_id for x in store.list_videos(status="indexed")] == [ids[0]]
    assert store.count_videos() == 12 and store.count_videos("pending") == 10
    store.delete_video(ids[3])
    with pytest.raises(NotFound):
        store.delete_video(ids[3])


def test_jobs(store):
    vid = store.create_video(h(1)).video_id
    job = store.create_job(vid)
    assert job.status == "queued"
    store.set_job_status(job.job_id, "running", timings={"decode_s": 0.5})
    done = store.set_job_status(job.job_id, "done", timings={"embed_s": 1.25})
    assert done.timings == {"decode_s": 0.5, "embed_s": 1.25}
    with pytest.raises(InvalidTransition):
        store.set_job_status(job.job_id, "running")
    assert store.jobs_for_video(vid) == [done]
    with pytest.raises(NotFound):
        store.create_job(12345)


def test_concurrent_writers(store):
    errors = []

    def work(t: int) -> None:
        try:
            for i in range(20):
                vid = store.create_video(h(t * 1000 + i)).video_id
                store.create_job(vid)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and store.count_videos() == 80
