"""The `drca` command root. Each package keeps its own commands in its `cli.py`; this module only wires them.

The commands of `model` (flops, demo, convert-seed) and `training` (train, eval, synth, media) are registered directly:
at load time their modules import only typer and the torch-free `model.config` and `model.presets`; everything
else is imported inside the command that runs it. The service's commands (serve, worker, ingest, reindex) are
resolved when one of them is asked for, so `drca train`, `drca synth`, `drca flops`, `drca eval` and `drca media`
never import the `service` package (tests/test_layers.py checks this in a fresh interpreter). `drca --help` and
`drca ingest` (the HTTP client) load no torch, faiss, redis or fastapi (tests/test_light_imports.py).
"""

from __future__ import annotations

import logging

import typer
from typer.core import TyperGroup

from model import cli as model_cli
from training import cli as training_cli
from training.data import cli as data_cli

SERVICE_COMMANDS = ("serve", "worker", "ingest", "reindex")  # the commands of `service.cli.app`


def _service_group(ctx: typer.Context):
    """`service.cli.app` as a command group, imported on first use."""
    from service.cli import app as service_app

    return typer.main.get_group(service_app)


class _RootGroup(TyperGroup):
    """The root group: its own commands, plus the service's commands loaded lazily."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        return [*super().list_commands(ctx), *SERVICE_COMMANDS]

    def get_command(self, ctx: typer.Context, cmd_name: str):
        if cmd_name in SERVICE_COMMANDS:
            return _service_group(ctx).get_command(ctx, cmd_name)
        return super().get_command(ctx, cmd_name)


app = typer.Typer(cls=_RootGroup, help="drca: DRCA video classification and retrieval.", no_args_is_help=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is noise


app.command("flops")(model_cli.flops)
app.command("demo")(model_cli.demo)
app.command("convert-seed")(model_cli.convert_seed)
app.command("synth")(data_cli.synth)
app.add_typer(data_cli.media_app, name="media")
app.add_typer(training_cli.train_app, name="train")
app.add_typer(training_cli.eval_app, name="eval")


if __name__ == "__main__":
    app()
