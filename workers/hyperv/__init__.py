"""Hyper-V driver: WinRM session and the shipped operation scripts."""
