"""The KVM probe boots its guest for real; needs qemu-system-x86_64."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from lamina.agent.drivers.kvm import kvm_usable, probe_accel

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 not installed"
    ),
]


def test_probe_guest_runs_under_tcg() -> None:
    # Same guest, same command line as the KVM probe, software emulation: must print.
    assert probe_accel("tcg", timeout=10.0) is True


def test_kvm_usable_is_bounded_and_cached() -> None:
    kvm_usable.cache_clear()
    started = time.monotonic()
    first = kvm_usable(timeout=3.0)
    assert time.monotonic() - started < 10.0
    started = time.monotonic()
    assert kvm_usable(timeout=3.0) is first
    assert time.monotonic() - started < 0.01


@pytest.mark.skipif(
    "LAMINA_EXPECT_KVM" not in os.environ, reason="set LAMINA_EXPECT_KVM=0/1 for this host"
)
def test_kvm_usable_matches_host() -> None:
    # On the project's machines /dev/kvm exists but KVM guests hang: LAMINA_EXPECT_KVM=0.
    kvm_usable.cache_clear()
    assert kvm_usable() is (os.environ["LAMINA_EXPECT_KVM"] == "1")
