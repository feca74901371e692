"""Errors a user can cause and fix."""


class UserError(Exception):
    """A problem with the user's input (path, name, spec, shapes, data).

    The message is one line that says what was wrong and what to do. The CLI
    prints it on stderr and exits with code 2; it never shows a traceback.
    """
