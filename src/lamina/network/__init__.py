"""Virtual networks (STORM, the Collective): networks per owner, the addresses Lamina
allocates on them, their DNS zones and records, and port forwards. The manager keeps the
model and pushes each host's share of it to its agent (``lamina.network.sync``), which runs
the bridges, dnsmasq and the configuration-service relay. See docs/networks.md.
"""
