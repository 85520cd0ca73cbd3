"""The core: events, rules, the engine, the request path, the disk and its
views. Pure library, no pytest: everything else in the package builds on it."""
