"""The `drca` command line. Each package keeps its own commands in its `cli.py`; this module wires them."""

from __future__ import annotations

import logging

import typer

app = typer.Typer(help="drca: DRCA video classification and retrieval.", no_args_is_help=True)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":
    app()
