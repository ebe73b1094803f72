//! Storage of received instances: Part 10 file meta, path templates, temp files and rename.
