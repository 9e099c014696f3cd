"""The exceptions hirn raises for a user's mistakes (bugs stay plain exceptions)."""


class HirnError(Exception):
    """Base of every error caused by input, files or options a user gave."""


class InputError(HirnError, ValueError):
    """A tensor, frame or clip the model cannot take as given."""


class CheckpointError(HirnError, ValueError):
    """A checkpoint that is missing, unreadable or does not fit the model."""
