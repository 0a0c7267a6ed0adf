"""Block volumes (VBS): volumes, snapshots and their attachments to instances over iSCSI.

The manager keeps the metadata and runs the multi-step operations as jobs; the volume server
(an agent role, ``lamina.agent.volumes``) runs a backend's *command patterns*
(``lamina.agent.patterns``, one TOML file per backend under ``patterns/``) and exports
volumes with tgt. See docs/volumes.md.
"""
