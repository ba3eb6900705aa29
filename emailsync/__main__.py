from emailsync.commands.cli import entry

entry()
