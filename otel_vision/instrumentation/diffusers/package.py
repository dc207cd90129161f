"""The library versions this instrumentor supports."""

_instruments = ("diffusers >= 0.30",)
