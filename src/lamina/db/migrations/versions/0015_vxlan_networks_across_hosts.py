"""networks across hosts: a VXLAN id per network, the hosts' tunnel addresses, one service
address (the gateway) on every host of a network

Revision ID: 0015_vxlan_networks_across_hosts
Revises: 0014_ckpt_checkpoints
Create Date: 2026-12-07 17:00:00.000000
"""

import ipaddress

import sqlalchemy as sa
from alembic import op

revision = "0015_vxlan_networks_across_hosts"
down_revision = "0014_ckpt_checkpoints"
branch_labels = None
depends_on = None

HOST_ROWS = sa.text("host_id IS NULL")


def upgrade() -> None:
    # Plain ADD COLUMN and unique indexes: SQLite cannot recreate tables others refer to.
    op.add_column("networks", sa.Column("vni", sa.Integer(), nullable=True))
    op.create_index("uq_networks_vni", "networks", ["vni"], unique=True)
    op.add_column("hosts", sa.Column("tunnel_address", sa.String(length=45), nullable=True))
    with op.batch_alter_table("network_ports", schema=None) as batch_op:
        batch_op.drop_constraint("uq_ports_network_ip", type_="unique")
    bind = op.get_bind()
    networks = bind.execute(
        sa.text("SELECT id, cidr FROM networks ORDER BY created_at, id")
    ).fetchall()
    for vni, (network_id, cidr) in enumerate(networks, start=1):
        gateway = str(ipaddress.ip_network(cidr).network_address + 1)
        bind.execute(
            sa.text("UPDATE networks SET vni = :vni WHERE id = :id"), {"vni": vni, "id": network_id}
        )
        # Every host of a network now answers on its gateway (a second host had the next
        # free address before).
        bind.execute(
            sa.text(
                "UPDATE network_ports SET ip = :ip WHERE network_id = :id AND host_id IS NOT NULL"
            ),
            {"ip": gateway, "id": network_id},
        )
    op.create_index(
        "uq_ports_network_ip", "network_ports", ["network_id", "ip"], unique=True,
        sqlite_where=HOST_ROWS, postgresql_where=HOST_ROWS,
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("uq_ports_network_ip", table_name="network_ports")
    # Hosts' rows shared the gateway: keep the first host's, the others go (their agents
    # lose the network at their next sync, as before this revision a second host had to be
    # given an address of its own).
    op.execute(
        "DELETE FROM network_ports WHERE host_id IS NOT NULL AND id NOT IN "
        "(SELECT MIN(id) FROM network_ports WHERE host_id IS NOT NULL GROUP BY network_id)"
    )
    with op.batch_alter_table("network_ports", schema=None) as batch_op:
        batch_op.create_unique_constraint("uq_ports_network_ip", ["network_id", "ip"])
    op.drop_index("uq_networks_vni", table_name="networks")
    op.drop_column("networks", "vni")
    op.drop_column("hosts", "tunnel_address")
