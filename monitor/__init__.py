"""tapewatch daemon: wiring, MQTT publishing, configuration and the command line.

The public surface: the configuration and the pure pipeline (frames and REST bodies in, MQTT
messages out). The daemon (``monitor.daemon.Daemon``) and the commands (``monitor.cli``) do I/O
and are imported from their modules, so importing ``monitor`` opens no socket library.
"""

__version__ = "0.1.0"

from monitor.config import Config, ConfigError, config_from_dict, load_config
from monitor.messages import OutMessage
from monitor.pipeline import Pipeline

__all__ = [
    "Config",
    "ConfigError",
    "OutMessage",
    "Pipeline",
    "__version__",
    "config_from_dict",
    "load_config",
]
