"""The one error type of the training area: bad input named in one sentence.

The CLI catches it (and seminar.data's DataError), prints the message and exits with code 2.
"""


class TrainingError(ValueError):
    """A run directory, checkpoint, model name or request that cannot be used."""
