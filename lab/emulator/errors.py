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


class MissingVM(OpError):
    """The VM asked about is not on this host, as the shipped scripts' lookup (Get-QmVM)
    reports it: their own error id VMNotFound. `Operations.run` turns it into Get-VM's own
    error for a script that looks the VM up with Get-VM -Id (`get_vm_not_found`)."""

    def __init__(self, vm_id: str):
        super().__init__(f"No virtual machine with ID {vm_id} on this host.", "ObjectNotFound",
                         "VMNotFound,Get-QmVM", vm_id)
        self.vm_id = vm_id


def get_vm_not_found(vm_id: str) -> OpError:
    """What `Get-VM -Id` throws for an id the host does not have: an InvalidArgument like any
    bad argument (the category and id a real host gives Get-VM's "unable to find")."""
    return OpError(f"Hyper-V was unable to find a virtual machine with ID \"{vm_id}\".", "InvalidArgument",
                   fqid("InvalidParameter", "GetVM"), vm_id)


def fips_refusal(method: str) -> OpError:
    """What a host enforcing FIPS-validated algorithms says to a script that makes a
    SHA256Managed: .NET's InvalidOperationException, as a failed method call in PowerShell."""
    return OpError(f"Exception calling \"{method}\" with \"0\" argument(s): \"This implementation is not part of "
                   "the Windows Platform FIPS validated cryptographic algorithms.\"", "NotSpecified",
                   "InvalidOperationException")
