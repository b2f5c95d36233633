"""Failures that a restart cannot fix: data that ran out, a stage that cannot be filled. Raised
as CannotContinue anywhere in the run (a packing actor, a read task, the coordinator), they reach
the train workers as text inside Ray's wrappers; the workers then end the run at once with that
one line, instead of spending every allowed restart on the same error."""

from __future__ import annotations

CANNOT_CONTINUE = "the run cannot continue: "


class CannotContinue(RuntimeError):
    """A failure that will repeat however often the run restarts."""

    def __init__(self, message: str):
        super().__init__(CANNOT_CONTINUE + message)


def cannot_continue(error: BaseException) -> str | None:
    """The message of a CannotContinue raised anywhere under `error` (Ray wraps a remote error's
    text, and a stage's failure travels as text), or None."""
    text = str(error)
    at = text.find(CANNOT_CONTINUE)
    if at < 0:
        return None
    return text[at + len(CANNOT_CONTINUE):].splitlines()[0].strip()
