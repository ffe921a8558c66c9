"""What every ``feedforge`` command shares: the Typer app, consoles, options, error handling.

Errors raised on purpose (:class:`~feedforge.errors.FeedforgeError`) print one clear message,
not a traceback.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from feedforge.config import Settings, load_settings
from feedforge.errors import FeedforgeError

app = typer.Typer(
    name="feedforge",
    help="An open personalized-feed engine: simulate -> build -> train -> evaluate -> "
    "publish -> serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

WorkdirOpt = Annotated[
    Path, typer.Option("--workdir", "-w", help="Work directory holding every artifact")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML settings file", exists=False)
]
DEFAULT_WORKDIR = Path("work")

F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(func: F) -> F:
    """Turn a :class:`~feedforge.errors.FeedforgeError` into one red line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FeedforgeError as exc:
            # The message is plain text (paths may hold "[...]"), never wrapped or styled.
            err_console.print("error:", exc.message, style="bold red", markup=False)
            raise typer.Exit(code=1) from exc

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress(title: str) -> Iterator[Callable[[str], None]]:
    """A Rich progress line for a stage; yields a callback that updates its description.

    When the output is not a terminal (a log file, CI), each update is printed as a line of
    its own with the seconds since the start instead, so a long run shows where it is.
    """
    if not console.is_terminal:
        started = time.monotonic()

        def line(message: str) -> None:
            console.print(
                f"{title}: {message} [{time.monotonic() - started:.0f} s]",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )

        yield line
        line("done")
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        task = bar.add_task(title, total=None)
        yield lambda msg: bar.update(task, description=f"{title}: {msg}")
        bar.update(task, description=f"{title}: done", total=1, completed=1)


def settings_from(config: Path | None) -> Settings:
    """The settings of ``--config`` (defaults and ``FEEDFORGE_`` variables without one)."""
    return load_settings(config)
