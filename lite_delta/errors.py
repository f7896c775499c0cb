"""The one exception type for user mistakes and environment problems."""


class LiteDeltaError(Exception):
    """Something the user can fix: printed as one line by the CLI, which exits with code 2."""

    exit_code = 2
