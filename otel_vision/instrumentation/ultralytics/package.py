"""The library versions this instrumentor supports."""

_instruments = ("ultralytics >= 8.3",)
