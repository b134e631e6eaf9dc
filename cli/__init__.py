"""The `ftserve` command."""
