"""In-memory stand-ins for the agent's host-side interfaces, for fast unit tests.

``FakeHypervisor`` implements ``lamina.agent.drivers.base.Hypervisor`` and
``FakeVolumeBackend`` implements ``lamina.agent.volumes.VolumeBackend``. Each passes the same
contract suite as the real implementation (``tests/contract/test_hypervisor_contract.py``,
``tests/contract/test_volume_backend_contract.py``), so a behaviour the real code changes
fails there first instead of drifting silently.
"""

from fakes.hypervisor import FakeHypervisor
from fakes.volumes import FakeVolumeBackend

__all__ = ["FakeHypervisor", "FakeVolumeBackend"]
