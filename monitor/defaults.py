"""The built-in configuration: the repository's ``config.yaml``, shipped inside the package.

Commands that only read (``replay``, ``tail``, ``demo``) use it when there is no ``config.yaml``
in the working directory, so they work from anywhere and from an installed package.
``monitor/config.yaml`` is a link to the repository's ``config.yaml`` (package data in
pyproject.toml), so there is one file to edit and nothing to keep in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from typing import Any, Final

import yaml

from monitor.config import Config, config_from_dict

BUILT_IN_NAME: Final = "the built-in default config (the repository's config.yaml)"


def default_config_data() -> dict[str, Any]:
    """A fresh copy of the built-in config data, free to change."""
    data = yaml.safe_load(files("monitor").joinpath("config.yaml").read_text(encoding="utf-8"))
    assert isinstance(data, dict), "the shipped config.yaml is a mapping"
    return data


def default_config(env: Mapping[str, str] | None = None) -> Config:
    """The built-in config, validated; ``env`` as for ``config_from_dict``."""
    return config_from_dict(default_config_data(), env)
