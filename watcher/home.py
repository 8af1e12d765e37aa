"""`coverwatch init`: the home folder (README, "The home folder"), with a commented default config."""

from __future__ import annotations

import logging
from pathlib import Path

import configs
from watcher.config import DEFAULT_CONFIG_NAME, FOLDERS, Config, load_config
from watcher.errors import ConfigError

log = logging.getLogger(__name__)


def init_home(home: str | Path) -> Path:
    """Create HOME with its folders and a default coverwatch.yaml; never overwrite an existing config."""
    home = Path(home)
    cfg_path = home / DEFAULT_CONFIG_NAME
    if cfg_path.exists():
        raise ConfigError(f"{cfg_path}: a config already exists; not overwriting it")
    if home.exists() and not home.is_dir():
        raise ConfigError(f"{home}: exists and is not a directory")
    home.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(configs.read_text("coverwatch.yaml"), encoding="utf-8")
    ensure_folders(load_config(cfg_path))
    return cfg_path


def ensure_folders(cfg: Config) -> None:
    """Create any missing folder of the layout (the daemon calls this at start too)."""
    for name in FOLDERS:
        path = cfg.path(name)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise ConfigError(f"paths.{name}: {path} exists and is not a directory") from None
        except OSError as exc:
            raise ConfigError(f"paths.{name}: cannot create {path}: {exc.strerror}") from None
