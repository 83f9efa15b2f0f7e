"""The one exception type users see.

A GPT2KitError carries a one-line message that names the fix. The CLI prints it as
`error: ...` with no traceback. It subclasses ValueError so that library callers can
treat bad arguments the usual way.
"""


class GPT2KitError(ValueError):
    pass
