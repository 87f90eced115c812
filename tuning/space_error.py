"""The error of a malformed search space, in a module of its own so that every ``tuning.space*`` module can
raise it without importing ``tuning.space``."""


class SpaceError(ValueError):
    """A search space is malformed; the message names the offending key, e.g. ``params.model.alpha.low``."""
