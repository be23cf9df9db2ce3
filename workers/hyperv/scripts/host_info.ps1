# quickmig-op: host_info
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

function Get-QmFreeBytes([string]$Path) {
    # Free space of the volume that holds $Path; null when that is not a drive-letter path.
    try {
        $drive = New-Object -TypeName System.IO.DriveInfo -ArgumentList ([System.IO.Path]::GetPathRoot($Path))
        [int64]$drive.AvailableFreeSpace
    }
    catch {
        $null
    }
}

function Get-QmErrorMessage([string]$Text) {
    # A reason of CheckSystemCompatibilityInfo is an embedded Msvm_Error instance: its Message
    # when it is CIM-XML, else the text as it came.
    if ($Text.TrimStart().StartsWith('<')) {
        $node = ([xml]$Text).SelectSingleNode("//PROPERTY[@NAME='Message']/VALUE")
        if ($node) {
            return [string]$node.InnerText
        }
    }
    $Text
}

$vmHost = Get-VMHost
$versions = @(foreach ($v in @(Get-VMHostSupportedVersion)) { [string]$v.Version })
$switches = @(foreach ($s in @(Get-VMSwitch)) { [string]$s.Name })
$cpu = @(Get-CimInstance -ClassName Win32_Processor)[0]
# Memory a VM can start in: each NUMA node's available memory (MemoryAvailable, in MB), and
# whether a VM may span nodes (Set-VMHost -NumaSpanningEnabled).
$numa = @(foreach ($n in @(Get-VMHostNumaNode)) {
    [ordered]@{ id = [int]$n.NodeId; memory_available_bytes = [int64]$n.MemoryAvailable * 1048576 }
})
# free_bytes: where new virtual disks go by default. vm_root_free_bytes: the vm_root
# folder when the caller names one, else the host's default virtual machine folder.
$vmRoot = [string]$Req.vm_root
if (-not $vmRoot) { $vmRoot = [string]$vmHost.VirtualMachinePath }
# Static MAC addresses of this host's VMs: a VM that arrives with one of them could not run
# beside its holder.
$macs = @(foreach ($vm in @(Get-VM)) {
    foreach ($n in @(Get-VMNetworkAdapter -VM $vm)) {
        if (-not $n.DynamicMacAddressEnabled) {
            [ordered]@{ mac = [string]$n.MacAddress; vm = [string]$vm.Name; vm_id = $vm.Id.ToString(); state = [string]$vm.State }
        }
    }
})
$result = [ordered]@{
    name = [string]$env:COMPUTERNAME
    supported_versions = $versions
    switches = $switches
    cpu_vendor = [string]$cpu.Manufacturer
    free_bytes = (Get-QmFreeBytes ([string]$vmHost.VirtualHardDiskPath))
    vm_root_free_bytes = (Get-QmFreeBytes $vmRoot)
    cpu_model = [string]$cpu.Name
    numa_spanning_enabled = [bool]$vmHost.NumaSpanningEnabled
    numa_nodes = $numa
    static_macs = $macs
}
if ($Req.guardians) {
    # The guardians whose certificates this host holds (a host in HostGuardianService mode
    # lists none): a VM with a virtual TPM starts only where one of its key protector's is.
    $result.guardians = @(foreach ($g in @(Get-HgsGuardian)) {
        [ordered]@{
            name = [string]$g.Name; encryption_thumbprint = [string]$g.EncryptionCertificate.Thumbprint
            signing_thumbprint = [string]$g.SigningCertificate.Thumbprint
            has_private_signing_key = [bool]$g.HasPrivateSigningKey
        }
    })
}
if ($Req.unc_paths) {
    # ISO images on library shares (UNC paths quickmig checked as such): whether this host
    # reaches each file. Read only; a path that cannot be tested counts as unreachable.
    $reach = [ordered]@{}
    foreach ($p in @($Req.unc_paths)) {
        $ok = $false
        try { $ok = [bool](Test-Path -LiteralPath ([string]$p) -PathType Leaf) } catch { $ok = $false }
        $reach[[string]$p] = $ok
    }
    $result.unc_reachable = $reach
}
if ($Req.compatibility_info) {
    # CheckSystemCompatibilityInfo of a VM's GetSystemCompatibilityInfo blob: whether it could
    # be quick-migrated here, without attempting it. 0 compatible, 32784 not compatible.
    $service = Get-CimInstance -Namespace 'root\virtualization\v2' -ClassName 'Msvm_VirtualSystemMigrationService'
    $bytes = [Convert]::FromBase64String([string]$Req.compatibility_info)
    $out = Invoke-CimMethod -InputObject $service -MethodName 'CheckSystemCompatibilityInfo' -Arguments @{ CompatibilityInfo = $bytes }
    $code = [int]$out.ReturnValue
    $reasons = @(foreach ($r in @($out.Reasons)) { if ($r) { Get-QmErrorMessage ([string]$r) } })
    $result.compatibility = [ordered]@{ return_value = $code; compatible = ($code -eq 0); reasons = $reasons }
}

$result | ConvertTo-Json -Compress -Depth 8
