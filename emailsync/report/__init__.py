"""What a run tells the world: journal lines per run, metrics, alerts and monitoring pings."""
