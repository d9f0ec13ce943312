"""The jobs behind `scripts/`: each takes parsed options and runs one command."""
