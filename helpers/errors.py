"""The errors a user can cause, shown in a notebook as their message, not as a traceback.

Every error class of ours that a user's input or workspace can raise (a dataset that fails its
check, a wrong parameter, a stage not trained yet, a refused Drive consent...) derives from
:class:`UserError` as well as from its usual built-in base, so ``except ValueError`` still
catches it. Its message already names what is wrong and what to do, so IPython shows only that,
in one short red block: IPython asks an exception for ``_render_traceback_()`` before it formats
a traceback. The cell still fails, and "Run all" still stops there. Errors raised by libraries
(TensorFlow, numpy...) and plain bugs keep their full traceback.
"""
from __future__ import annotations

RED, BOLD, RESET = "\x1b[31m", "\x1b[1m", "\x1b[0m"


class UserError(Exception):
    """A mix-in base for our errors that the user can fix: IPython shows the message alone."""

    def _render_traceback_(self) -> list[str]:
        return user_error_lines(self)


class InvalidRequest(UserError, ValueError):
    """A notebook asked for something that does not exist or cannot be done (an unknown metric or
    augmentation, a stage that does not fit the request): the message says what to use."""


def user_error_lines(error: BaseException) -> list[str]:
    """``error`` as the lines a notebook shows: its class name and message, nothing else."""
    lines = str(error).splitlines() or [""]
    head = f"{RED}{BOLD}{type(error).__name__}{RESET}{RED}: {lines[0]}{RESET}"
    return [head, *(f"{RED}{line}{RESET}" for line in lines[1:])]


__all__ = ["UserError", "InvalidRequest", "user_error_lines"]
