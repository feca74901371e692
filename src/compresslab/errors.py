"""Errors a user can cause and fix."""


class UserError(Exception):
    """A problem with the user's input (path, name, spec, shapes, data).

    The message is one line that says what was wrong and what to do. The CLI
    prints it on stderr and exits with code 2; it never shows a traceback.
    """


class StudyIncomplete(UserError):
    """Some steps of a study failed (recorded with their reasons); every independent step
    finished and is kept. The CLI exits with code 3."""

    exit_code = 3

    def __init__(self, failed: dict[str, str]):
        self.failed = dict(failed)
        first = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3])
        more = f" (+{len(failed) - 3} more)" if len(failed) > 3 else ""
        super().__init__(f"study incomplete: {len(failed)} step(s) failed ({first}{more}); finished steps are kept "
                         "and reused when you run the study again")
