"""Imports every domain's models so that ``Base.metadata`` knows all tables."""

from lamina.appliances import models as appliance_models  # noqa: F401
from lamina.audit import models as audit_models  # noqa: F401
from lamina.channels import models as channel_models  # noqa: F401
from lamina.compute import models as compute_models  # noqa: F401
from lamina.db import deployment as deployment_models  # noqa: F401
from lamina.db.types import Base
from lamina.identity import models as identity_models  # noqa: F401
from lamina.images import models as image_models  # noqa: F401
from lamina.jobs import models as job_models  # noqa: F401
from lamina.network import models as network_models  # noqa: F401
from lamina.volumes import models as volume_models  # noqa: F401

metadata = Base.metadata
