"""How an emulated operation fails: the way a cmdlet fails (message, ErrorCategory,
FullyQualifiedErrorId), so the shipped scripts report it as they would report Hyper-V's."""
from __future__ import annotations


def fqid(ident: str, cmdlet: str) -> str:
    """The FullyQualifiedErrorId a Hyper-V cmdlet gives an error: `<ident>,<the cmdlet's class>`."""
    return f"{ident},Microsoft.HyperV.PowerShell.Commands.{cmdlet}"


class OpError(Exception):
    """An operation failed the way a cmdlet fails: message, ErrorCategory, FullyQualifiedErrorId."""

    def __init__(self, message: str, category: str = "NotSpecified", fqid: str = "", target: str = ""):
        super().__init__(message)
        self.message = message
        self.category = category
        self.fqid = fqid or "NotSpecified"
        self.target = target


def invalid_arg(message: str, cmdlet: str = "GetVM") -> OpError:
    return OpError(message, "InvalidArgument", fqid("InvalidParameter", cmdlet))
