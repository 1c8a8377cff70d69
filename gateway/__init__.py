"""Tollbooth: an access gateway that lets AI agents reach existing HTTP APIs safely."""

__version__ = "0.1.0"
