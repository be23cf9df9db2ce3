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

$vmHost = Get-VMHost
$versions = @(foreach ($v in @(Get-VMHostSupportedVersion)) { [string]$v.Version })
$switches = @(foreach ($s in @(Get-VMSwitch)) { [string]$s.Name })
$cpu = @(Get-CimInstance -ClassName Win32_Processor)[0]
# free_bytes: where new virtual disks go by default. vm_root_free_bytes: the vm_root
# folder when the caller names one, else the host's default virtual machine folder.
$vmRoot = [string]$Req.vm_root
if (-not $vmRoot) { $vmRoot = [string]$vmHost.VirtualMachinePath }
$result = [ordered]@{
    name = [string]$env:COMPUTERNAME
    supported_versions = $versions
    switches = $switches
    cpu_vendor = [string]$cpu.Manufacturer
    free_bytes = (Get-QmFreeBytes ([string]$vmHost.VirtualHardDiskPath))
    vm_root_free_bytes = (Get-QmFreeBytes $vmRoot)
}

$result | ConvertTo-Json -Compress -Depth 8
