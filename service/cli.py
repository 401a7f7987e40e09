"""`drca serve`, `drca worker` and `drca ingest`: the service's commands (wired into the root CLI by ``cli/main.py``)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(help="The service: gateway, encoder worker, batch ingest.", no_args_is_help=True)


#: The index options of `serve`, `worker` and `reindex`.
INDEX_OPTION = typer.Option(None, "--index", help="faiss | milvus: the vector index (default: DRCA_INDEX or faiss); "
                            "in scale-out with milvus, workers write into Milvus themselves.")
RUNTIME_OPTION = typer.Option(None, "--runtime", help="auto | torch | openvino: what runs the model (default: "
                           "DRCA_RUNTIME or auto: OpenVINO on a CPU, torch on CUDA).")
MILVUS_URI_OPTION = typer.Option(None, "--milvus-uri", help="With --index milvus: a Milvus Lite file or "
                                 "http://host:19530, the server every gateway and worker shares in scale-out "
                                 "(default: DRCA_MILVUS_URI or DATA_DIR/milvus.db).")


def _settings(settings_file: Path | None, **given: object):
    """Settings from the flags given (None: not given), the settings file and the environment; exit 2 on
    a bad value."""
    from pydantic import ValidationError

    from service.settings import Settings

    try:
        extra = {"_env_file": settings_file} if settings_file else {}
        return Settings(**extra, **{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        err = e.errors()[0]
        typer.echo(f"error: bad setting {'.'.join(map(str, err['loc']))}: {err['msg']}", err=True)
        raise typer.Exit(2) from None


def _built(build, settings):
    """`build(settings)`, a role: exit 2 with one line when the checkpoint is missing or malformed, the
    index holds another checkpoint's vectors (service/generations.py) or is held by another process, a
    file of the data dir is damaged (the index pointer or metadata, a reindex's labels or state file), the
    current generation is gone while the store holds indexed videos, or the backend cannot be reached."""
    from indexer import IndexerError
    from model.checkpoint import CheckpointError
    from service.backends import BackendUnavailable
    from service.generations import CheckpointMismatch, DataDirDamaged, MissingGeneration

    try:
        return build(settings)
    except (CheckpointError, CheckpointMismatch, DataDirDamaged, MissingGeneration, IndexerError,
            BackendUnavailable) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _check_faiss() -> None:
    """The service needs faiss, an extra (two wheels install the same module): one line, not a traceback,
    when it is missing."""
    try:
        import faiss  # noqa: F401
    except ImportError as e:
        typer.echo(f"error: faiss is not installed ({e}); install the extra: pip install -e '.[cpu]' "
                   "(or '.[gpu]' on a CUDA host)", err=True)
        raise typer.Exit(2) from None


def _warn_key_on_command_line(instead: str) -> None:
    typer.echo(f"warning: a key given with --api-key is visible to every user of this machine (ps, "
               f"/proc/*/cmdline) and stays in the shell history; use {instead} instead", err=True)


@app.command("serve")
def serve(
    host: str = typer.Option(None, help="Bind address (default: DRCA_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default: DRCA_PORT or 8000)."),
    checkpoint: Path = typer.Option(None, help="Checkpoint directory (default: the shipped drca-lite0)."),
    data_dir: Path = typer.Option(None, help="Videos, index and metadata (default: ./data)."),
    device: str = typer.Option(None, help="auto | cpu | cuda"),
    runtime: str = RUNTIME_OPTION,
    api_key: list[str] = typer.Option(None, "--api-key", help="Require this bearer key (repeatable). Visible "
                                      "in `ps`: prefer --api-key-file or DRCA_API_KEYS."),
    api_key_file: Path = typer.Option(None, "--api-key-file", help="Require the bearer keys in this file (one "
                                      "a line; default: DRCA_API_KEYS_FILE)."),
    admin_key_file: Path = typer.Option(None, "--admin-key-file", help="Turn the admin routes (online reindex) "
                                        "on, with the admin keys in this file (one a line; default: "
                                        "DRCA_ADMIN_KEYS_FILE or DRCA_ADMIN_KEYS; none: off)."),
    admin_checkpoint_dir: list[Path] = typer.Option(None, "--admin-checkpoint-dir", help="A directory the "
                                                    "online reindex may take checkpoints from (repeatable; "
                                                    "default: DRCA_ADMIN_CHECKPOINT_DIRS; none: refused)."),
    redis_url: str = typer.Option(None, "--redis", help="Gateway only, with Redis as broker and store "
                                  "(default: DRCA_REDIS_URL; unset: the embedded service)."),
    index: str = INDEX_OPTION,
    milvus_uri: str = MILVUS_URI_OPTION,
    settings_file: Path = typer.Option(None, help="A file of DRCA_* lines (default: $DRCA_SETTINGS_FILE)."),
) -> None:
    """Run the service. Embedded (default): HTTP gateway, encoder worker and index in one process. With
    --redis URL: one gateway replica; encoding is done by `drca worker --redis URL` processes."""
    _check_faiss()
    from service.http import server
    from service.http.app import create_app
    from service.roles import build_server

    if api_key:
        _warn_key_on_command_line("--api-key-file FILE or DRCA_API_KEYS")
    settings = _settings(settings_file, host=host, port=port, checkpoint=checkpoint, data_dir=data_dir,
                         device=device, runtime=runtime, api_keys=api_key or None, api_keys_file=api_key_file,
                         admin_keys_file=admin_key_file, admin_checkpoint_dirs=admin_checkpoint_dir or None,
                         redis_url=redis_url,
                         index=index, milvus_uri=milvus_uri)
    built = _built(build_server, settings)  # the checkpoint read once, the index checked against it
    try:
        server.run(create_app(settings, service=built), settings)
    finally:
        built.stop()


@app.command("worker")
def worker(
    redis_url: str = typer.Option(None, "--redis", help="Redis URL (default: DRCA_REDIS_URL)."),
    checkpoint: Path = typer.Option(None, help="Checkpoint directory (default: the shipped drca-lite0)."),
    data_dir: Path = typer.Option(None, help="The data directory the gateways store uploads in (shared)."),
    device: str = typer.Option(None, help="auto | cpu | cuda"),
    index: str = INDEX_OPTION,
    milvus_uri: str = MILVUS_URI_OPTION,
    runtime: str = RUNTIME_OPTION,
    check: bool = typer.Option(False, "--check", help="Health check: exit 0 if a worker on this host beat "
                               "its heartbeat recently, else 1 (container healthcheck)."),
    settings_file: Path = typer.Option(None, help="A file of DRCA_* lines (default: $DRCA_SETTINGS_FILE)."),
) -> None:
    """Run one encoder worker: take ingest jobs and inference requests from Redis until SIGTERM/SIGINT,
    then finish what it holds."""
    _check_faiss()
    import signal
    import threading

    from service.backends import backend_class
    from service.roles import build_worker

    settings = _settings(settings_file, redis_url=redis_url, checkpoint=checkpoint, data_dir=data_dir,
                         device=device, runtime=runtime, index=index, milvus_uri=milvus_uri)
    if backend_class(settings).workers_in_process:
        typer.echo("error: drca worker needs --redis URL (or DRCA_REDIS_URL)", err=True)
        raise typer.Exit(2)
    if check:
        raise typer.Exit(0 if _worker_alive_here(settings) else 1)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    role = _built(build_worker, settings)  # with Milvus: the same checkpoint check as a gateway
    role.start()
    logging.getLogger(__name__).info("drca worker %s running (Redis %s)", role.broker.name, settings.redis_url)
    try:
        while not stop.wait(1.0):
            if not role.alive:
                logging.getLogger(__name__).error("the encoder worker stopped; exiting")
                raise typer.Exit(1)
    finally:
        role.stop()


def _worker_alive_here(settings) -> bool:
    import socket
    import time

    import redis

    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    since = time.time() - 3 * settings.worker_heartbeat_s
    host = socket.gethostname() + "-"
    beats = client.zrangebyscore(f"{settings.redis_prefix}:workers", since, "+inf")
    return any(b.decode().startswith(host) for b in beats)


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    target: Path = typer.Argument(..., help="A folder (walked recursively) or a list file (.txt: one path a line)."),
    server: str = typer.Option("http://127.0.0.1:8000", help="Base URL of a running `drca serve`."),
    concurrency: int = typer.Option(4, min=1, max=64, help="Uploads in flight."),
    api_key: str = typer.Option(None, envvar="DRCA_API_KEY", help="Bearer key, if the server needs one "
                                "(default: DRCA_API_KEY; on the command line it is visible in `ps`)."),
    api_key_file: Path = typer.Option(None, "--api-key-file", help="Read the bearer key from this file (its "
                                      "first key line)."),
    job_timeout: float = typer.Option(3600.0, help="Seconds to wait for one job."),
) -> None:
    """Upload every video under TARGET, wait for the jobs, print a summary. Skips content already indexed;
    exits 1 if any file failed."""
    import asyncio

    from tqdm import tqdm

    from service.ingest import IngestInputError, collect_files, ingest_files
    from service.settings import read_key_file

    source = ctx.get_parameter_source("api_key")
    if api_key and source is not None and source.name == "COMMANDLINE":
        _warn_key_on_command_line("--api-key-file FILE or DRCA_API_KEY")
    if api_key_file is not None:
        try:
            api_key = read_key_file(api_key_file)[0]
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None

    try:
        files = collect_files(target)
    except (IngestInputError, OSError, UnicodeDecodeError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not files:
        typer.echo(f"error: no video files under {target}", err=True)
        raise typer.Exit(2)
    with tqdm(total=len(files), unit="video", desc="ingest") as bar:
        summary = asyncio.run(ingest_files(files, server, concurrency, api_key, job_timeout,
                                           on_done=lambda _p, _o: bar.update(1)))
    typer.echo(f"ingested {len(summary.ingested)}, skipped {len(summary.skipped)} (already indexed), "
               f"failed {len(summary.failed)}")
    for path, reason in summary.failed:
        typer.echo(f"  failed {path}: {reason}")
    if summary.failed:
        raise typer.Exit(1)



@app.command("reindex")
def reindex(
    checkpoint: Path = typer.Option(..., help="The new checkpoint directory whose embeddings replace the index's."),
    data_dir: Path = typer.Option(None, help="The data directory (default: DRCA_DATA_DIR or ./data)."),
    index: str = INDEX_OPTION,
    milvus_uri: str = MILVUS_URI_OPTION,
    device: str = typer.Option(None, help="auto | cpu | cuda"),
    settings_file: Path = typer.Option(None, help="A file of DRCA_* lines (default: $DRCA_SETTINGS_FILE)."),
    server: str = typer.Option(None, "--server", help="Online: ask the running service at this URL to reindex "
                               "(CHECKPOINT is a path on the server's machine, inside one of its "
                               "admin_checkpoint_dirs); searches keep answering."),
    admin_key_file: Path = typer.Option(None, "--admin-key-file", help="With --server: the server's admin key "
                                        "(not an API key), from this file (default: DRCA_ADMIN_KEY)."),
) -> None:
    """Offline (no server running on the data dir): re-embed every indexed video with CHECKPOINT into a new
    index generation, recompute the labels, then switch to it in one step. Resumable: after a kill, run it
    again. Afterwards start the service with `drca serve --checkpoint CHECKPOINT`.

    Online (--server URL): the running service does the same through its worker and queue, and switches
    when done; this command follows its progress. Restart the service with --checkpoint CHECKPOINT later."""
    if server:
        raise typer.Exit(_reindex_online(server, checkpoint, admin_key_file))
    _check_faiss()
    from indexer import IndexerError
    from model.checkpoint import CheckpointError
    from service.active import read_serving_checkpoint
    from service.generations import DataDirDamaged
    from service.reindex import ReindexError
    from service.reindex import reindex as run_reindex

    settings = _settings(settings_file, data_dir=data_dir, index=index, milvus_uri=milvus_uri, device=device)
    try:
        new = read_serving_checkpoint(checkpoint, weights=True)  # NEW, read once; the serving one is not read
        summary = run_reindex(settings, new)
    except (ReindexError, IndexerError, CheckpointError, DataDirDamaged) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2 if not isinstance(e, ReindexError) else 1) from None
    rate = summary.video_seconds / summary.seconds if summary.seconds else 0.0
    typer.echo(f"index generation {summary.generation}: {summary.videos} videos ({summary.embedded} embedded "
               f"now, {rate:.1f} s of video per second); start the service with --checkpoint {checkpoint}")


def _reindex_online(server: str, checkpoint: Path, admin_key_file: Path | None) -> int:
    """POST /v1/admin/reindex with the admin key, then follow GET /v1/admin/reindex until the switch; the
    exit code."""
    import os
    import time

    import httpx
    from tqdm import tqdm

    from service.settings import read_key_file

    key = os.environ.get("DRCA_ADMIN_KEY")
    if admin_key_file is not None:
        try:
            key = read_key_file(admin_key_file)[0]
        except ValueError as e:
            typer.echo(f"error: {e}", err=True)
            return 2
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = server.rstrip("/") + "/v1/admin/reindex"
    try:
        with httpx.Client(timeout=60, headers=headers) as client:
            r = client.post(url, json={"checkpoint": str(checkpoint)})
            if r.status_code != 202:
                typer.echo(f"error: {r.status_code}: {_error_message(r)}", err=True)
                return 1
            status = r.json()
            with tqdm(total=status["videos"] or None, unit="video", desc="reindex") as bar:
                while status["state"] == "running":
                    time.sleep(1.0)
                    r = client.get(url)
                    if r.status_code != 200:
                        typer.echo(f"error: {r.status_code}: {_error_message(r)}", err=True)
                        return 1
                    status = r.json()
                    bar.total = status["videos"]
                    bar.n = status["done"]
                    bar.refresh()
    except httpx.HTTPError as e:
        typer.echo(f"error: cannot reach {server}: {e}", err=True)
        return 1
    if status["state"] != "switched":
        typer.echo(f"error: the reindex {status['state']}: {status['error']}", err=True)
        return 1
    rate = status["video_seconds"] / status["seconds"] if status["seconds"] else 0.0
    typer.echo(f"index generation {status['generation']}: {status['videos']} videos ({status['embedded']} embedded "
               f"now, {rate:.1f} s of video per second); restart the service with --checkpoint {checkpoint}")
    return 0


def _error_message(r) -> str:
    try:
        return r.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return r.text[:200]
