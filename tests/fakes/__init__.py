"""Test helpers over the shipped fakes (``lamina.agent.drivers.fake.FakeHypervisor``,
``lamina.agent.fake_volumes.FakeVolumeBackend``): ``agents.InProcessAgents`` runs the real
agent on them in-process. The fakes pass the same contract suites as the real
implementations (``tests/contract/test_hypervisor_contract.py`` and
``tests/contract/test_volume_backend_contract.py``)."""
