"""The project's one error type for user mistakes (bad input, bad config, missing data).

The CLI turns a :class:`MetarecError` into one line on stderr and exit code 2, without a traceback.
Anything else escaping is a bug in metarec.
"""


class MetarecError(Exception):
    """A problem the user can fix; the message says what to fix."""


class ConfigError(MetarecError):
    """An invalid configuration: unknown group, option or key, or a value of the wrong type."""


class DataError(MetarecError):
    """Missing, malformed or unusable data files or splits."""


class NonFiniteError(MetarecError):
    """Meta-training produced a non-finite loss or meta-gradient and the policy says stop."""


class PluginError(MetarecError):
    """An installed plugin (an entry point in ``metarec.learners``, ``.models`` or ``.sources``) failed to load."""
