"""oxidip: a high-throughput DICOM C-STORE receiver (Rust core, Python orchestration)."""

from oxidip._boundary import (
    AssociationClosed,
    Attributes,
    ConnectionRefused,
    ContextsRefused,
    Event,
    InstanceFailed,
    InstanceStored,
    ServerWarning,
)
from oxidip._core import __version__
from oxidip.config import Config, ConfigError
from oxidip.receiver import Receiver

__all__ = [
    "AssociationClosed",
    "Attributes",
    "Config",
    "ConfigError",
    "ConnectionRefused",
    "ContextsRefused",
    "Event",
    "InstanceFailed",
    "InstanceStored",
    "Receiver",
    "ServerWarning",
    "__version__",
]
