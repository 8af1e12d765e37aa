"""The class registry: one list of class names for the whole dataset. Names are the identity; a class's
`position` is its id in the dataset, so ids never change once given and new names go at the end.

Example:
    >>> with session_scope(engine) as s:
    ...     register_classes(s, ["만화", "동화"])
    ['만화', '동화']
    >>> export_classes(engine, Path("predefined_classes.txt"))   # labelImg's class list
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.labels.formats import is_class_name, normalise_name
from storage.db import session_scope
from storage.files import write_atomically
from storage.tables import ClassName, LabelEvent

log = logging.getLogger(__name__)


def class_names(session: Session) -> list[str]:
    """The registry's names in position order: index i is dataset class id i."""
    return list(session.scalars(select(ClassName.name).order_by(ClassName.position)))


def register_classes(session: Session, names: list[str], *, file_id: int | None = None) -> list[str]:
    """Add the names the registry does not know yet, in the given order; return the new ones."""
    known = set(class_names(session))
    position = session.scalar(select(func.max(ClassName.position)))
    position = -1 if position is None else position
    added = []
    for raw in names:
        name = normalise_name(raw)
        if not name or name in known:
            continue
        if not is_class_name(name):  # every entry point validates with pipeline.labels.formats.class_name first
            raise ValueError(f"class name {name!r} was not validated before it reached the registry")
        position += 1
        known.add(name)
        added.append(name)
        session.add(ClassName(name=name, position=position))
        session.add(LabelEvent(kind="class_added", file_id=file_id, detail=f"new class {name!r} is id {position}",
                               data={"name": name, "position": position}))
        log.info("new class %r added to the registry as id %d", name, position)
    session.flush()
    return added


def export_classes(engine, path: Path) -> list[str]:
    """Write the registry as labelImg's predefined_classes.txt (UTF-8, one name per line), atomically."""
    with session_scope(engine) as s:
        names = class_names(s)
    path = Path(path)
    write_atomically(path, "".join(f"{n}\n" for n in names))
    return names
