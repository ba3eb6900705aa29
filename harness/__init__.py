"""What the tests, the benchmark and the demo stand email-sync in front of: stand-ins for the app's backend on
127.0.0.1 and the app's users table. Not part of email-sync: the package ships emailsync/ only
(pyproject.toml's package list), and nothing here imports tests/ or bench/."""
