"""The two ways a run can fail, so the CLI can map them to exit codes without guessing."""


class RaymergeError(Exception):
    """Base of every error raymerge reports as one clear message instead of a traceback."""

    exit_code = 1


class InvalidInput(RaymergeError):
    """The config or an input was rejected before anything was written (exit 2)."""

    exit_code = 2


class RunFailed(RaymergeError):
    """Something failed while the run was writing; staging was removed, nothing committed (exit 1)."""

    exit_code = 1
