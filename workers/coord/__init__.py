"""Coordination through Redis between every worker process of a fleet: VM leases with
fencing tokens and step claims, admission (migrations per host), copy slots, bandwidth
limits, shared ISO images, copy resume records, progress, and the audit logs of the
per-host limits. Each atomic step is a Lua script in lua/."""
