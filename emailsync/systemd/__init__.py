"""The service manager's side: notify messages, journald lines, systemctl and time spans."""
