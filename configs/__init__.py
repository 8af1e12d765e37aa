"""Shipped config files: the default coverwatch.yaml, a GPU-host example, the systemd unit."""

from importlib.resources import files


def read_text(name: str) -> str:
    return (files(__name__) / name).read_text(encoding="utf-8")
