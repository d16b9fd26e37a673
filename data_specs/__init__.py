"""Arrow schemas of every table that crosses a stage boundary, with validation."""
