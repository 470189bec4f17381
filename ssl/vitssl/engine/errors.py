"""Errors that are the user's to fix: entry points print them as one `error:` line and exit 2."""
from vitssl.config import ConfigError
from vitssl.data import DataError
from vitssl.engine.builders import LaunchError

USER_ERRORS = (ConfigError, DataError, LaunchError)
