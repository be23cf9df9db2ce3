"""Copy engine over SMB3 (smbprotocol)."""
