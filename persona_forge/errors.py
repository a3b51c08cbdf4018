"""Errors a user can cause. The CLI turns each into one line and a non-zero exit."""


class UserError(Exception):
    """A mistake the user can fix: bad input, bad recipe, missing model, unreachable endpoint.

    The message is one line saying what is wrong, where, and how to fix it.
    """

    exit_code = 2


class BackendUnavailable(UserError):
    """The chat backend cannot serve any request (bad key, unknown model, endpoint down)."""

    exit_code = 3
