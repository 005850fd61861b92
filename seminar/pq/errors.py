"""The one error class of seminar.pq: bad artifacts or inputs, caught at the CLI boundary."""


class PQError(Exception):
    """A PQ artifact or input is missing or malformed; the message names the file or field."""
