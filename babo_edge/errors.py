"""One error base class and one CLI wrapper for every babo-edge command.

Every error a user can cause and fix (a bad checkpoint, dataset, IR, device, source, option...)
is a `BaboError` whose message is one line saying what is wrong; each layer's class keeps its
name and its standard base (e.g. `CheckpointError` is also a ValueError). `run_cli` turns
them into `error: <message>` on stderr and exit status 2, and Ctrl-C into status 130 with a
one-line note, so no CLI prints a traceback for them; a `BaboWarning` (something the user
should know, e.g. fewer calibration images than asked for) prints as `warning: <message>`.
Standard library only: CLIs import it
before parsing their arguments.
"""
from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable[..., "int | None"])

USAGE_ERROR = 2
INTERRUPTED = 130


class BaboError(Exception):
    """An error the user can act on; its message is one line."""


class BaboWarning(UserWarning):
    """Something the user should know about a result that is still produced; one line."""


def run_cli(main: F | None = None, *, also: tuple[type[BaseException], ...] = (),
            interrupted: str = "interrupted") -> F | Callable[[F], F]:
    """Decorates a CLI's `main(argv=None) -> int`: a BaboError (or one of `also`, the standard
    errors that CLI always reported this way, e.g. OSError) -> `error: <message>`, exit 2;
    KeyboardInterrupt -> `interrupted` on one line, exit 130. Other exit codes are main's.
    Usable as `@run_cli` or `@run_cli(also=(OSError,), interrupted="...")`."""
    caught = (BaboError, *also)

    def wrap(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                with warnings.catch_warnings():
                    warnings.showwarning = _one_line_warning(warnings.showwarning)
                    return function(*args, **kwargs)
            except caught as e:
                print(f"error: {e}", file=sys.stderr)
                return USAGE_ERROR
            except KeyboardInterrupt:
                print(f"\n{interrupted}", file=sys.stderr)
                return INTERRUPTED
        return wrapper  # type: ignore[return-value]

    return wrap(main) if main is not None else wrap


def _one_line_warning(show: Callable) -> Callable:
    """`warnings.showwarning` printing a BaboWarning as `warning: <message>`, others as before."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, BaboWarning):
            print(f"warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning

