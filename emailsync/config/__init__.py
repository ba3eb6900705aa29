"""The configuration file, its values and credentials, and the reference rendered from its keys."""
