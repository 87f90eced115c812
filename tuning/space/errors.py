"""The error of a malformed search space, in a module of its own so that every module of ``tuning/space/``
raises it without importing the loader."""


class SpaceError(ValueError):
    """A search space is malformed; the message names the offending key, e.g. ``params.model.alpha.low``."""
