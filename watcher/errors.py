"""Errors of the daemon and the CLI (all under storage.errors.CoverwatchError).

    CoverwatchError
    └── ConfigError        the config file is missing, not YAML, or fails validation (code: bad_config)
"""

from storage.errors import CoverwatchError


class ConfigError(CoverwatchError):
    """Raised by load_config; the message starts with the key path ("watch.settle_seconds: ...")."""

    code = "bad_config"
