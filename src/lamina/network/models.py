"""Networks, their addresses, DNS records and port forwards as stored.

The unique keys carry the rules no race may break: one address is held once per network, a
MAC once in the cloud, a host name once per network, an instance joins a network once, a
host has one service address per network, and a host port is published once per host. Two
concurrent requests for one address cannot both insert their row.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from lamina.db.types import Base, UTCDateTime, utcnow

NETWORK_MODES = ("nat", "isolated")
NETWORK_STATUSES = ("active", "deleting")
RECORD_TYPES = ("A", "AAAA", "MX", "CNAME", "TXT", "SRV")
FORWARD_STATUSES = ("pending", "active", "removing")


def network_id() -> str:
    return f"net-{secrets.token_hex(8)}"


def record_id() -> str:
    return f"rec-{secrets.token_hex(8)}"


def forward_id() -> str:
    return f"fwd-{secrets.token_hex(8)}"


class Network(Base):
    __tablename__ = "networks"
    __table_args__ = (Index("uq_networks_vni", "vni", unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=network_id)
    #: A DNS label, unique (it is part of the zone's name). A deleted network's row goes.
    name: Mapped[str] = mapped_column(String(63), unique=True)
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    #: private: its owner, admins and grantees with ``operate`` attach instances to it;
    #: public: every user may.
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    cidr: Mapped[str] = mapped_column(String(18))
    mode: Mapped[str] = mapped_column(String(16), default="nat")
    #: 802.1Q tag joining the network's bridges across hosts (agents with an uplink).
    vlan: Mapped[int | None] = mapped_column(Integer, unique=True)
    #: The VXLAN id joining the network's bridges across hosts, allocated at creation.
    vni: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="active", index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Port(Base):
    """An address on a network: an instance's NIC (``instance_id``, ``mac``, ``hostname``)
    or a host's service address (``host_id``: its bridge, DHCP/DNS server and gateway).

    A host's row says the host carries the network; its address is the network's gateway,
    the same on every host (each answers its own guests), so only instances' addresses are
    unique on a network."""

    __tablename__ = "network_ports"
    __table_args__ = (
        Index(
            "uq_ports_network_ip",
            "network_id",
            "ip",
            unique=True,
            sqlite_where=text("host_id IS NULL"),
            postgresql_where=text("host_id IS NULL"),
        ),  # fmt: skip
        UniqueConstraint("mac", name="uq_ports_mac"),
        UniqueConstraint("network_id", "hostname", name="uq_ports_network_hostname"),
        UniqueConstraint("network_id", "instance_id", name="uq_ports_network_instance"),
        UniqueConstraint("network_id", "host_id", name="uq_ports_network_host"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    ip: Mapped[str] = mapped_column(String(15))
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id"), index=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), index=True)
    mac: Mapped[str | None] = mapped_column(String(17))
    hostname: Mapped[str | None] = mapped_column(String(63))
    #: The NIC's place among the instance's (eth0, eth1, ...); 0 is its primary network.
    nic: Mapped[int] = mapped_column(Integer, default=0)
    #: Whether the address was asked for (``--ip``) rather than allocated.
    static: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DnsRecord(Base):
    """A record added by hand to a network's zone (instances' own records are derived)."""

    __tablename__ = "dns_records"
    __table_args__ = (
        UniqueConstraint("network_id", "name", "type", "value", name="uq_records_value"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=record_id)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    #: Fully qualified, lower case, no final dot.
    name: Mapped[str] = mapped_column(String(253))
    type: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(1024))
    owner: Mapped[str | None] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PortForward(Base):
    """A guest's TCP port published on its host."""

    __tablename__ = "port_forwards"
    __table_args__ = (
        UniqueConstraint("host_id", "host_port", "protocol", name="uq_forwards_host_port"),
        UniqueConstraint("instance_id", "guest_port", "protocol", name="uq_forwards_guest"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=forward_id)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id"), index=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"), index=True)
    network_id: Mapped[str] = mapped_column(ForeignKey("networks.id"), index=True)
    guest_ip: Mapped[str] = mapped_column(String(15))
    guest_port: Mapped[int] = mapped_column(Integer)
    bind: Mapped[str] = mapped_column(String(45), default="127.0.0.1")
    #: Null until the host has chosen it (asked for 0: any free port).
    host_port: Mapped[int | None] = mapped_column(Integer)
    protocol: Mapped[str] = mapped_column(String(8), default="tcp")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
