"""What an operator types: the command line, `check`, `status` and the one-off operations."""
