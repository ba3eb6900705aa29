"""email-sync: keeps every user's mailbox in sync, one cycle per systemd timer tick."""

__version__ = "0.2.0"
# The schema this release needs: the last of emailsync.store.schema.STEPS, said here so that --version imports no
# SQLAlchemy (tests/unit/store/test_schema.py holds the two equal).
SCHEMA_VERSION = 5
