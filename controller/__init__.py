"""The controller: fleet-level duties that no single agent can do (today: the reaper)."""
