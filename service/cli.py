"""The `drca` command line. Each package keeps its own commands in its `cli.py`; this module wires them."""

from __future__ import annotations

import logging

import typer

from model import cli as model_cli
from training.data import cli as data_cli

app = typer.Typer(help="drca: DRCA video classification and retrieval.", no_args_is_help=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


app.command("flops")(model_cli.flops)
app.command("demo")(model_cli.demo)
app.command("synth")(data_cli.synth)
app.add_typer(data_cli.media_app, name="media")


if __name__ == "__main__":
    app()
