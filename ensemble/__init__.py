"""ensemble: build and run a fleet of Jitsi Meet servers."""

__version__ = "0.1.0"
