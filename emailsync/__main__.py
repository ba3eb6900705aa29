from emailsync.cli import entry

entry()
