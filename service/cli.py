"""The `drca` command line. Each package keeps its own commands in its `cli.py`; this module wires them."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from model import cli as model_cli
from training import cli as training_cli
from training.data import cli as data_cli

app = typer.Typer(help="drca: DRCA video classification and retrieval.", no_args_is_help=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise


app.command("flops")(model_cli.flops)
app.command("demo")(model_cli.demo)
app.command("synth")(data_cli.synth)
app.add_typer(data_cli.media_app, name="media")
app.add_typer(training_cli.train_app, name="train")
app.add_typer(training_cli.eval_app, name="eval")


@app.command("serve")
def serve(
    host: str = typer.Option(None, help="Bind address (default: DRCA_HOST or 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default: DRCA_PORT or 8000)."),
    checkpoint: Path = typer.Option(None, help="Checkpoint directory (default: the shipped drca-cpu)."),
    data_dir: Path = typer.Option(None, help="Videos, index and metadata (default: ./data)."),
    device: str = typer.Option(None, help="auto | cpu | cuda"),
    api_key: list[str] = typer.Option(None, "--api-key", help="Require this bearer key (repeatable)."),
    settings_file: Path = typer.Option(None, help="A file of DRCA_* lines (default: $DRCA_SETTINGS_FILE)."),
) -> None:
    """Run the embedded service: HTTP gateway, encoder worker and index in one process."""
    import uvicorn
    from pydantic import ValidationError

    from model.checkpoint import CheckpointError
    from service.app import create_app
    from service.runtime import read_card
    from service.settings import Settings

    given = {"host": host, "port": port, "checkpoint": checkpoint, "data_dir": data_dir, "device": device,
             "api_keys": api_key or None}
    try:
        extra = {"_env_file": settings_file} if settings_file else {}
        settings = Settings(**extra, **{k: v for k, v in given.items() if v is not None})
        read_card(settings.checkpoint)
    except ValidationError as e:
        err = e.errors()[0]
        typer.echo(f"error: bad setting {'.'.join(map(str, err['loc']))}: {err['msg']}", err=True)
        raise typer.Exit(2) from None
    except CheckpointError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=30)


@app.command("ingest")
def ingest(
    target: Path = typer.Argument(..., help="A folder (walked recursively) or a list file (.txt: one path a line)."),
    server: str = typer.Option("http://127.0.0.1:8000", help="Base URL of a running `drca serve`."),
    concurrency: int = typer.Option(4, min=1, max=64, help="Uploads in flight."),
    api_key: str = typer.Option(None, envvar="DRCA_API_KEY", help="Bearer key, if the server needs one."),
    job_timeout: float = typer.Option(3600.0, help="Seconds to wait for one job."),
) -> None:
    """Upload every video under TARGET, wait for the jobs, print a summary. Skips content already indexed;
    exits 1 if any file failed."""
    import asyncio

    from tqdm import tqdm

    from service.ingest import IngestInputError, collect_files, ingest_files

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


if __name__ == "__main__":
    app()
