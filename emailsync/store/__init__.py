"""Every statement about email-sync's tables and the app's users table."""
