"""Every error qtts raises on purpose. Messages say what was wrong and what to do."""


class QttsError(Exception):
    """Base class: catch this to handle any qtts error."""


class CheckpointError(QttsError):
    """A checkpoint folder is missing files, or its tensors do not match the config."""


class InvalidRequestError(QttsError, ValueError):
    """A request's text, voice, language or parameters are not usable."""


class UnknownSpeakerError(InvalidRequestError):
    """The speaker is not one of the model's built-in speakers."""


class UnknownLanguageError(InvalidRequestError):
    """The language is not one the model supports."""


class WrongModelTypeError(InvalidRequestError):
    """The mode asked for needs another model type (e.g. cloning on a CustomVoice model)."""


class AudioError(InvalidRequestError):
    """Reference audio that cannot be read, is silent, or is too short."""


class AudioTooLongError(AudioError):
    """Audio longer than the limit the caller set (found from its header or while decoding)."""


class OverloadedError(QttsError):
    """The engine has no room for another request right now."""


class CancelledError(QttsError):
    """The request was cancelled before it finished."""


class EngineFailedError(QttsError, RuntimeError):
    """A batched engine step failed: every request it was running fails with one of these (each its own)."""
