"""The manager's HTTP routes, one module per resource; each parses, calls the domain's
service and renders."""
