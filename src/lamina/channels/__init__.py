"""Channels (STORM's channel server): signed RSS feeds of appliances, their mirrors, and the
publisher's ``channel build``. Pure domain code: no database, no manager routes."""
