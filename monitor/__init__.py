"""tapewatch daemon: wiring, MQTT publishing, configuration and the command line."""

__version__ = "0.1.0"
