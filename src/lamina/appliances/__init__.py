"""Appliances (STORM): definitions in XML, versions and ranges, instance variables and
templates, installing from channels, deploying (traditional and layered) and capturing."""
