"""DNS: each network's zone ``<network>.<cloud domain>``, the records Lamina derives from its
instances (names, groups' round-robin A records, mail appliances' MX), and the records added
by hand, checked before they are stored."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lamina.compute.lifecycle import Provides
from lamina.compute.models import Instance
from lamina.errors import Conflict, InvalidRequest
from lamina.identity.principal import Principal
from lamina.network.models import DnsRecord as StoredRecord
from lamina.network.models import Network, Port
from lamina.wire.protocol import CONFIG_SERVICE_NAME, DNS_NAME, DnsRecord

_NAME = re.compile(DNS_NAME)
_HOSTNAME = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
#: What an appliance ``provides`` to have MX records published for it.
MAIL = ("mail", "smtp")
MX_PREFERENCE = 10
#: Instances that still have a name in DNS.
NAMED = ("building", "running", "paused", "stopped", "error")


def zone(network: Network, domain: str) -> str:
    return f"{network.name}.{domain}"


@dataclass(frozen=True)
class Checked:
    name: str
    type: str
    value: str


def qualify(name: str, zone_name: str, domain: str) -> str:
    """A record's name made absolute: ``@`` is the zone itself, a name ending in ``.`` or
    already under the zone is absolute, anything else is relative to the zone. A name under
    the cloud's domain but outside this network's zone is refused (it belongs to another
    network), and so is the configuration service's reserved name."""
    text = name.strip().lower()
    if text in ("", "@"):
        full = zone_name
    elif text.endswith("."):
        full = text[:-1]
    elif text == zone_name or text.endswith("." + zone_name):
        full = text
    else:
        full = f"{text}.{zone_name}"
    if len(full) > 253 or not _NAME.match(full):
        raise InvalidRequest(f"{name!r} is not a valid DNS name", name=name)
    if full == CONFIG_SERVICE_NAME:
        raise InvalidRequest(f"{CONFIG_SERVICE_NAME} is reserved for the configuration service")
    if (full == domain or full.endswith("." + domain)) and not (
        full == zone_name or full.endswith("." + zone_name)
    ):
        raise InvalidRequest(
            f"{full} is under the cloud's domain {domain} but not in this network's zone "
            f"{zone_name}",
            name=full,
        )
    return full


def check_record(name: str, type_: str, value: str, zone_name: str, domain: str) -> Checked:
    """A hand-made record, normalised; ``InvalidRequest`` naming what is wrong."""
    kind = type_.strip().upper()
    full = qualify(name, zone_name, domain)
    text = value.strip()
    if kind in ("A", "AAAA"):
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidRequest(f"{kind} record value {value!r} is not an address") from None
        if (kind == "A") != (address.version == 4):
            raise InvalidRequest(
                f"{kind} record value {value!r} is an IPv{address.version} address"
            )
        text = str(address)
    elif kind == "CNAME":
        text = _target(text, "CNAME target")
    elif kind == "MX":
        parts = text.split()
        if len(parts) != 2:
            raise InvalidRequest(f"MX record value {value!r} must be '<preference> <exchange>'")
        text = f"{_number(parts[0], 'MX preference', 65535)} {_target(parts[1], 'MX exchange')}"
    elif kind == "SRV":
        parts = text.split()
        if len(parts) != 4:
            raise InvalidRequest(
                f"SRV record value {value!r} must be '<priority> <weight> <port> <target>'"
            )
        numbers = [
            _number(p, label, 65535)
            for p, label in zip(parts, ("priority", "weight", "port"), strict=False)
        ]
        text = " ".join([*map(str, numbers), _target(parts[3], "SRV target")])
        parts = full.split(".")
        if len(parts) < 3 or not parts[0].startswith("_") or parts[1] not in ("_tcp", "_udp"):
            raise InvalidRequest(f"an SRV record's name is _service._tcp|_udp.<name>, not {full}")
    elif kind == "TXT":
        if not text or len(text) > 255 or any(c in text for c in '"\\,') or not text.isprintable():
            raise InvalidRequest(
                "a TXT record's text is 1-255 printable characters without quotes, "
                "backslashes or commas"
            )
    else:
        raise InvalidRequest(f"record type {type_!r}: one of A, AAAA, MX, CNAME, TXT, SRV")
    if kind != "SRV" and "_" in full:
        raise InvalidRequest(f"{full}: only SRV record names may contain '_'")
    return Checked(full, kind, text)


def _target(text: str, label: str) -> str:
    target = text.lower().rstrip(".")
    if len(target) > 253 or not _HOSTNAME.match(target):
        raise InvalidRequest(f"{label} {text!r} is not a host name")
    return target


def _number(text: str, label: str, top: int) -> int:
    if not text.isdigit() or int(text) > top:
        raise InvalidRequest(f"{label} {text!r} must be a number from 0 to {top}")
    return int(text)


def check_coexistence(records: Iterable[DnsRecord], new: Checked) -> None:
    """DNS's rule: a name with a CNAME has no other record (RFC 1034 3.6.2)."""
    for record in records:
        if record.name != new.name:
            continue
        if record.type == new.type and record.value == new.value:
            raise Conflict(f"{new.type} record {new.name} -> {new.value} already exists")
        if "CNAME" in (record.type, new.type):
            raise Conflict(
                f"{new.name} already has a {record.type} record: a name with a CNAME can have "
                "no other record"
            )


def zone_records(
    session: Session, network: Network, domain: str, *, provides: Provides | None
) -> list[DnsRecord]:
    """Every record of the network's zone: each instance's name, each group's round-robin A
    record, an MX for each instance of a mail appliance (what an appliance provides:
    ``provides``, registered by the appliances in ``lamina.compute.lifecycle``), then the
    records added by hand."""
    return [record for record, _ in _zone(session, network, domain, provides)]


def _zone(
    session: Session, network: Network, domain: str, provides: Provides | None
) -> list[tuple[DnsRecord, str]]:
    """The zone's records, each with its source: instance, group, mail or manual."""
    zone_name = zone(network, domain)
    rows = session.execute(
        select(Port, Instance)
        .join(Instance, Port.instance_id == Instance.id)
        .where(Port.network_id == network.id, Instance.status.in_(NAMED))
        .order_by(Port.ip)
    ).all()
    found: list[tuple[DnsRecord, str]] = []
    seen: dict[str, tuple[str, ...]] = {}
    for port, instance in rows:
        fqdn = f"{port.hostname}.{zone_name}"
        found.append((DnsRecord(name=fqdn, type="A", value=port.ip), "instance"))
        if instance.group_name:
            group = f"{instance.group_name}.{zone_name}"
            found.append((DnsRecord(name=group, type="A", value=port.ip), "group"))
        if instance.appliance_id and _mail(session, instance.appliance_id, provides, seen):
            maildomain = ((instance.variables or {}).get("domain") or zone_name).lower()
            mx = DnsRecord(name=maildomain, type="MX", value=f"{MX_PREFERENCE} {fqdn}")
            found.append((mx, "mail"))
    for stored in session.scalars(
        select(StoredRecord)
        .where(StoredRecord.network_id == network.id)
        .order_by(StoredRecord.name, StoredRecord.type, StoredRecord.value)
    ):
        found.append((DnsRecord(name=stored.name, type=stored.type, value=stored.value), "manual"))
    unique, keys = [], set()
    for record, source in found:
        key = (record.name, record.type, record.value)
        if key not in keys:
            keys.add(key)
            unique.append((record, source))
    return unique


def _mail(
    session: Session,
    appliance_id: str,
    provides: Provides | None,
    seen: dict[str, tuple[str, ...]],
) -> bool:
    if appliance_id not in seen:
        seen[appliance_id] = provides(session, appliance_id) if provides else ()
    return any(p in MAIL for p in seen[appliance_id])


def add_record(
    session: Session, network: Network, domain: str, name: str, type_: str, value: str,
    who: Principal, *, provides: Provides | None,
) -> StoredRecord:  # fmt: skip
    """Check and store a hand-made record of the network's zone. ``Conflict`` for a record
    already there, one that breaks the CNAME rule, or one that would shadow an instance's
    own name."""
    zone_name = zone(network, domain)
    checked = check_record(name, type_, value, zone_name, domain)
    current = zone_records(session, network, domain, provides=provides)
    instance_names = {
        f"{hostname}.{zone_name}"
        for hostname in session.scalars(
            select(Port.hostname).where(Port.network_id == network.id, Port.hostname.is_not(None))
        )
    }
    if checked.name in instance_names:
        raise Conflict(f"{checked.name} is an instance's own name on this network")
    check_coexistence(current, checked)
    record = StoredRecord(
        network_id=network.id,
        name=checked.name,
        type=checked.type,
        value=checked.value,
        owner=who.user_id,
    )
    session.add(record)
    session.flush()
    return record


def describe_record(record: StoredRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "type": record.type,
        "value": record.value,
        "source": "manual",
        "created_at": record.created_at,
    }


def listing(
    session: Session, network: Network, domain: str, *, provides: Provides | None
) -> list[dict[str, Any]]:
    """The zone as ``dns record list`` shows it: every record with where it comes from
    (``provides``: as for ``zone_records``)."""
    manual = {
        (r.name, r.type, r.value): r
        for r in session.scalars(select(StoredRecord).where(StoredRecord.network_id == network.id))
    }
    shown = []
    for record, source in _zone(session, network, domain, provides):
        stored = manual.get((record.name, record.type, record.value))
        if source == "manual" and stored is not None:
            shown.append(describe_record(stored))
        else:
            shown.append(
                {"id": None, "name": record.name, "type": record.type, "value": record.value,
                 "source": source}
            )  # fmt: skip
    return shown
