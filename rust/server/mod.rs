//! The Storage SCP: listener, per-association handler, configuration and the events it emits.
