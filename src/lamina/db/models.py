"""Imports every domain's models so that ``Base.metadata`` knows all tables."""

from lamina.compute import models as compute_models  # noqa: F401
from lamina.db.types import Base
from lamina.jobs import models as job_models  # noqa: F401

metadata = Base.metadata
