"""Block volumes: persistent disks, their snapshots, and their attachment to instances
over iSCSI (docs/volumes.md)."""
