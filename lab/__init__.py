"""The embedded lab: Redis, Samba and emulated Hyper-V hosts on this machine."""
