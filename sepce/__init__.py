"""SepCE: shared library behind the train/eval scripts (model loading, data, losses, increments, evaluation)."""

__version__ = "0.1.0"
