"""email-sync: keeps every user's mailbox in sync, one cycle per systemd timer tick."""

__version__ = "0.1.0"
