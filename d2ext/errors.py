"""d2ext's one kind of user error.

Every mistake a user can make and fix (a missing file, a wrong config key or value, data that
does not fit the model) raises a ``UserError``, whose message is one line naming the file or
key and the fix. Each tool's ``main`` runs under ``d2ext.cli.run_tool``, which prints that line
and exits non-zero; ``--debug`` shows the traceback instead. The module-specific errors
(``DatasetError``, ``ExportError``, ``CurationError``, ...) are ``UserError`` subclasses.
"""


class UserError(ValueError):
    """A mistake the user can fix; the message says what and how, in one line."""
