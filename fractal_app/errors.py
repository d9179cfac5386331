"""Domain errors. The gRPC adapter maps each to a status code; nothing below it knows gRPC."""


class AppError(Exception):
    """Base class: an error whose message a person can act on."""


class InvalidArgument(AppError):
    """The request itself is wrong (bad JSON, bad field, bad name). Maps to INVALID_ARGUMENT."""


class NotFound(AppError):
    """The request names a task or subtask the app does not know. Maps to NOT_FOUND."""


class FailedPrecondition(AppError):
    """Well formed, but not valid in the current state. Maps to FAILED_PRECONDITION."""


class Aborted(AppError):
    """The work was stopped by AbortTask/AbortSubtask while running. Maps to ABORTED."""
