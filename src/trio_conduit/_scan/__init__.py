"""Port scanning: the sans-IO engine, the port-set parser, the trio driver, the reports."""
