"""Forwarding: the jobs the routing rules queued (``oxidip.routing``, ``oxidip.registry``)
delivered by the Rust engine (``_core.Forwarder``), with retries, leases and a circuit
breaker per destination (``service``, ``breaker``). README: Forwarding."""

from oxidip.forwarding.breaker import CircuitBreaker
from oxidip.forwarding.service import CLAIM_INTERVAL, Forwarding, ForwardingMetrics

__all__ = ["CLAIM_INTERVAL", "CircuitBreaker", "Forwarding", "ForwardingMetrics"]
