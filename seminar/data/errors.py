"""The one error type the data pipeline raises for bad input.

Its message is a single sentence naming the file and, where there is one, the column; the CLI
prints it and exits with code 2, without a traceback.
"""


class DataError(ValueError):
    """Input data (a source file, a column, a prepared dataset) is missing or malformed."""
