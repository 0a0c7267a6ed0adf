"""Models and migrations shared by all domains."""

from lamina.db.engine import Database
from lamina.db.types import Base, UTCDateTime, new_id, utcnow

__all__ = ["Base", "Database", "UTCDateTime", "new_id", "utcnow"]
