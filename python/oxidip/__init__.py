"""oxidip: a high-throughput DICOM C-STORE receiver (Rust core, Python orchestration)."""

from oxidip._boundary import (
    AssociationClosed,
    Attributes,
    Event,
    InstanceFailed,
    InstanceStored,
)
from oxidip._core import __version__
from oxidip.config import Config, ConfigError
from oxidip.receiver import Receiver

__all__ = [
    "AssociationClosed",
    "Attributes",
    "Config",
    "ConfigError",
    "Event",
    "InstanceFailed",
    "InstanceStored",
    "Receiver",
    "__version__",
]
