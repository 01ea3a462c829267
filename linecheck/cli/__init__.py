"""The ``linecheck`` command line (typer + rich): one module per group of commands."""

from linecheck.cli.main import app

__all__ = ["app"]
