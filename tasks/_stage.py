"""The stage contract every ``tasks/<stage>.py`` shares (DESIGN.md, "One stage contract").

A stage is ``run(<its params sections>, *, <input/output paths>, log) -> Report``: hyper-parameters come
only from ``params.yaml`` (through :mod:`nucleate.config`), paths from :data:`nucleate.io.layout.LAYOUT`,
messages go to a :mod:`logging` logger, and the returned :class:`Report` has ``.lines()`` for people and
``.as_dict()`` for JSON. The stage's Typer ``command`` turns every expected error into one
``error: ...`` line and exit status 1 (:func:`stage_errors`), never a traceback.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import typer

from nucleate.config import Params, ParamsError, load_params
from nucleate.io import ImageError, TableError
from nucleate.io.layout import MissingInput

__all__ = [
    "EXPECTED_ERRORS",
    "Report",
    "StageError",
    "fail",
    "load_params_or_exit",
    "logger",
    "run_alone",
    "setup_logging",
    "stage_errors",
]


class StageError(RuntimeError):
    """A stage cannot do its work with the inputs it was given; the message says what to change."""


#: errors a stage's command turns into one line (bad input, missing input, bad params)
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    StageError, MissingInput, TableError, ImageError, ParamsError, FileNotFoundError, ValueError, KeyError,
)


@dataclasses.dataclass
class Report:
    """What one stage run did. Subclasses add fields and override :meth:`lines`."""

    def lines(self) -> list[str]:
        """One or more lines for people."""
        return [", ".join(f"{k} {v}" for k, v in self.as_dict().items())]

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (paths as strings)."""
        return _jsonable(dataclasses.asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    return value


def logger(stage: str) -> logging.Logger:
    """The logger of stage ``stage`` (``nucleate.<stage>``)."""
    return logging.getLogger(f"nucleate.{stage}")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it once; the property ignores it
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Plain ``message`` lines on stderr for the ``nucleate`` loggers (what the CLI shows); idempotent."""
    root = logging.getLogger("nucleate")
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def fail(error: object) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with status 1 (no traceback)."""
    text = str(error)
    if isinstance(error, KeyError) and text.startswith(("'", '"')):
        text = text[1:-1]
    typer.echo(f"error: {text}", err=True)
    raise typer.Exit(1)


def load_params_or_exit(path: Path) -> Params:
    """:func:`nucleate.config.load_params`, or one ``error:`` line per problem (key path first) and exit 1."""
    try:
        return load_params(path)
    except FileNotFoundError:
        fail(f"{path}: params file not found (run from the project folder, or pass --params)")
    except ParamsError as exc:
        for line in exc.problems:
            typer.echo(f"error: {path}: {line}", err=True)
        raise typer.Exit(1) from None


@contextlib.contextmanager
def stage_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn the expected errors (and ``extra``) raised inside into one ``error:`` line and exit 1."""
    setup_logging()
    try:
        yield
    except (*EXPECTED_ERRORS, *extra) as exc:
        fail(exc)


def run_alone(command: Callable[..., None], argv: list[str] | None = None) -> None:
    """Run one stage's Typer ``command`` as a program (``python -m tasks.<stage> ...``)."""
    app = typer.Typer(add_completion=False)
    app.command()(command)
    app(argv)
