"""Instrumentors for vision libraries, one subpackage per library, each a `BaseInstrumentor`."""
