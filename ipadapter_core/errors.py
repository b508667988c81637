"""Exceptions with messages that say what is wrong and how to fix it."""


class IPAdapterError(ValueError):
    """Base class: the inputs cannot work together; the message says why and what to do."""


class AdapterFileError(IPAdapterError):
    """The weight file cannot be read (truncated, corrupt, not an IP-Adapter)."""


class UnsupportedAdapterError(IPAdapterError):
    """A known IP-Adapter family that this extension does not run (yet)."""


class EncoderMismatchError(IPAdapterError):
    """The image prompt was encoded with a CLIP vision model the adapter was not trained on."""


class ModelMismatchError(IPAdapterError):
    """The adapter was trained for another UNet family than the model it is applied to."""


class InputError(IPAdapterError):
    """A node input is unusable (empty, NaN/Inf, out of range, malformed text); the message names the input."""
