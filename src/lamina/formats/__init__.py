"""Appliance file formats, shared by the manager, the agent and the publisher's ``channel
build``: definitions as data (``definition``), reading and writing their XML (``parsing``,
``writing``, ``xmlsafe``, ``appliance.xsd``), versions and ranges, instance variables and
templates, and the check that a layer file is the filesystem image it claims to be
(``layerfs``). Pure: no database, no services, no domain package."""
