"""Errors meant for the user's eyes."""


class UserError(Exception):
    """Something the user can fix; the CLI and the app show its message as one line."""
