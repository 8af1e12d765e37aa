"""The declarative base and the column types that carry file names (bytes that are not UTF-8 included)."""

from __future__ import annotations

from sqlalchemy import Text
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

from storage.names import from_db, shown, to_db


class Base(DeclarativeBase):
    pass


class FsText(TypeDecorator):
    """A path or file name as `os` gives it, bytes that are not UTF-8 included (see storage.names)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else to_db(value)

    def process_result_value(self, value, dialect):
        return None if value is None else from_db(value)


class ShownText(TypeDecorator):
    """Text for people that may quote a file name: a byte that is not UTF-8 is stored as U+FFFD."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else shown(value)
