"""Hypervisor drivers, chosen by name.

``HYPERVISORS`` maps the short names accepted in settings to driver classes; build one with
``load_hypervisor(name, **options)``. The libvirt driver's module (and so the libvirt SDK) is
imported only when a libvirt hypervisor is loaded or ``HYPERVISORS`` is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lamina.agent.drivers.base import Hypervisor
from lamina.errors import ConfigError

if TYPE_CHECKING:
    HYPERVISORS: dict[str, type[Hypervisor]]

__all__ = ["HYPERVISORS", "Hypervisor", "load_hypervisor"]


def _builtins() -> dict[str, type[Hypervisor]]:
    from lamina.agent.drivers.libvirt_driver import LibvirtHypervisor

    return {"libvirt": LibvirtHypervisor}


def __getattr__(name: str) -> Any:
    # HYPERVISORS is built on first use so importing this package never needs libvirt.
    if name == "HYPERVISORS":
        registry = _builtins()
        globals()["HYPERVISORS"] = registry
        return registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_hypervisor(name: str, **options: Any) -> Hypervisor:
    """A hypervisor driver by its short name, built with ``options``.

    Raises ``ConfigError`` naming the unknown driver and the known ones.
    """
    registry: dict[str, type[Hypervisor]] = __getattr__("HYPERVISORS")
    try:
        cls = registry[name]
    except KeyError:
        known = ", ".join(sorted(registry))
        raise ConfigError(
            f"unknown hypervisor driver {name!r}; known drivers: {known}",
            key="hypervisor",
        ) from None
    return cls(**options)
