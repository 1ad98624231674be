"""The error every model-side failure raises: a model or adapter that cannot be loaded."""


class ModelError(ValueError):
    """A model or adapter that cannot be loaded, with what was expected."""
