"""Appliances (STORM): definitions in XML, versions and ranges, instance variables and
templates. Pure domain code: no database, no HTTP."""
