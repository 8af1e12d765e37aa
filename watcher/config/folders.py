"""Where coverwatch's folders may be: never inside one another, never the home folder's parent, never a system
folder, and the SQLite database outside all of them. Each refusal names the key and where it led."""

from __future__ import annotations

import os
from pathlib import Path

from watcher.config.schema import FOLDERS, Config
from watcher.errors import ConfigError

# A folder outside the home may be anywhere but here: these, and everything inside them, belong to the system...
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/proc", "/sbin", "/sys", "/usr")
# ...and these hold other people's folders (a share mounted under /mnt is fine, /mnt itself is not).
SYSTEM_FOLDERS = ("/", "/home", "/media", "/mnt", "/opt", "/root", "/run", "/srv", "/tmp", "/var")
_OVERLAP = "the folders must not overlap"


def check_folders(cfg: Config, path: Path) -> None:
    """Refuse folders that overlap (one would feed another forever) or that are system folders."""
    folders = {name: cfg.path(name) for name in FOLDERS}
    for name, p in folders.items():
        if not p.is_relative_to(cfg.home):
            _check_system(cfg, name, p, path)
        _check_home(cfg, name, p, path)
    names = list(FOLDERS)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = folders[first], folders[second]
            if a == b:
                raise ConfigError(f"{path}: {_key(cfg, second)} is the same folder as {_key(cfg, first)}: {_OVERLAP}")
            if a.is_relative_to(b) or b.is_relative_to(a):
                inner, outer = (first, second) if a.is_relative_to(b) else (second, first)
                raise ConfigError(f"{path}: {_key(cfg, inner)} is inside {_key(cfg, outer)}: {_OVERLAP}")
    db = _sqlite_file(cfg)
    for name, p in folders.items():
        if db is not None and db.is_relative_to(p):
            raise ConfigError(f"{path}: database ({cfg.database}) is inside {_key(cfg, name)}: "
                              "keep the database out of coverwatch's folders")


def _key(cfg: Config, name: str) -> str:
    """`paths.archive (inbox)`, with where a symlink led when it is not plain from the value."""
    value = getattr(cfg.paths, name)
    resolved = cfg.path(name)
    if Path(os.path.normpath(cfg.home / value)) != resolved:
        value = f"{value}, which is {resolved}"
    return f"paths.{name} ({value})"


def _check_home(cfg: Config, name: str, p: Path, path: Path) -> None:
    if cfg.home.is_relative_to(p):
        where = "is" if p == cfg.home else "contains"
        raise ConfigError(f"{path}: {_key(cfg, name)} {where} the home folder, which holds {path.name} and the "
                          f"database: {_OVERLAP}")


def _check_system(cfg: Config, name: str, p: Path, path: Path) -> None:
    top = Path(*p.parts[:2])  # /usr/local/x -> /usr
    in_tree = str(top) in SYSTEM_TREES or top.name.startswith("lib")  # /lib, /lib32, /lib64, /libx32
    if (in_tree and p == top) or str(p) in SYSTEM_FOLDERS or p == _user_home():
        where = "is a system folder"
    elif in_tree:
        where = "is inside a system folder"
    else:
        return
    raise ConfigError(f"{path}: {_key(cfg, name)} {where}, not a place for coverwatch's folders")


def _user_home() -> Path | None:
    try:
        return Path.home().resolve()
    except (RuntimeError, KeyError):  # no $HOME and no passwd entry
        return None


def _sqlite_file(cfg: Config) -> Path | None:
    url = cfg.database_url
    prefix = "sqlite:///"
    if url.startswith(prefix) and url[len(prefix):] not in ("", ":memory:"):
        return Path(url[len(prefix):].split("?", 1)[0]).resolve()
    return None


def check_folder_types(cfg: Config) -> None:
    for name in FOLDERS:
        p = cfg.path(name)
        if p.exists() and not p.is_dir():
            raise ConfigError(f"paths.{name}: {p} exists and is not a directory")

