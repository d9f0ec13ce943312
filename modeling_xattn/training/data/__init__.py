"""Data: every source read into one row schema, as whole datasets or as streams."""
