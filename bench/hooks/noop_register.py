"""Registration off, for ``bench/registration.py``: replaces the database registration with
nothing (``OXIDIP_HOOKS=noop_register``, ``PYTHONPATH=bench/hooks``). Receiving still journals
and acknowledges every instance; only the registry (and so series states) is left out."""

from oxidip import InstanceStored

REGISTER_MODE = "replace"


def register(instances: list[InstanceStored]) -> None:
    """Registers nothing."""
