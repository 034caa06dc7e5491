"""Errors a user can act on. Stage scripts and the CLI print them without a traceback."""


class PicoError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ParamsError(PicoError):
    """A key in params.yaml is unknown, missing, of the wrong type or out of range."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"params: {key}: {message}")


class DataError(PicoError):
    """An input file is missing, empty or malformed (the message names the file, and the line if any)."""


class CheckpointError(PicoError):
    """A checkpoint is missing, truncated, foreign or does not match the tokenizer/model it is used with."""


class TrainingError(PicoError):
    """Training cannot go on (e.g. the loss became NaN/inf)."""
