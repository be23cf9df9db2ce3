# quickmig-op: describe_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

function Get-QmVM([string]$Id) {
    # One VM by its id. Get-VM -Name would take a wildcard pattern, -Id cannot.
    $vm = Get-VM -Id $Id
    if (-not $vm) {
        Write-Error -Message ('Hyper-V was unable to find a virtual machine with ID "' + $Id + '".') -Category ObjectNotFound -ErrorId 'VMNotFound' -TargetObject $Id
    }
    $vm
}

function Get-QmVMInfo($VM) {
    # The VMInfo shape of OPERATIONS.md; this function is identical in every script that has it.
    $id = $VM.Id.ToString()
    $base = Join-Path -Path $VM.ConfigurationLocation -ChildPath ('Virtual Machines\' + $id.ToUpperInvariant())
    $disks = @(foreach ($d in @(Get-VMHardDiskDrive -VM $VM)) {
        $chain = @()
        $p = [string]$d.Path
        while ($p -and $null -eq $d.DiskNumber -and $chain.Count -lt 64) {
            $chain += $p
            $vhd = $null
            try { $vhd = Get-VHD -Path $p }
            catch {
                Write-Error -Message ('Cannot read virtual disk ' + $p + ' of VM ' + $id + ': ' + $_.Exception.Message) -Category ReadError -ErrorId 'DiskChainUnreadable'
            }
            $p = [string]$vhd.ParentPath
        }
        [ordered]@{
            controller_type = [string]$d.ControllerType; controller_number = [int]$d.ControllerNumber
            controller_location = [int]$d.ControllerLocation; path = [string]$d.Path; chain = $chain
        }
    })
    $isos = @(foreach ($dvd in @(Get-VMDvdDrive -VM $VM)) { if ($dvd.Path -like '*.iso') { [string]$dvd.Path } })
    $snapshots = @(foreach ($s in @(Get-VMSnapshot -VM $VM)) {
        $sid = $s.Id.ToString()
        [ordered]@{
            id = $sid; name = [string]$s.Name
            config_path = Join-Path -Path $VM.SnapshotFileLocation -ChildPath ('Snapshots\' + $sid.ToUpperInvariant() + '.vmcx')
        }
    })
    $switches = @(foreach ($n in @(Get-VMNetworkAdapter -VM $VM)) { if ($n.SwitchName) { [string]$n.SwitchName } })
    $stateFiles = @(foreach ($ext in '.vmcx', '.vmgs', '.vmrs') {
        if (Test-Path -LiteralPath ($base + $ext) -PathType Leaf) { $base + $ext }
    })
    [ordered]@{
        id = $id; name = [string]$VM.Name; state = [string]$VM.State; generation = [int]$VM.Generation
        version = [string]$VM.Version; memory_startup_bytes = [int64]$VM.MemoryStartup
        checkpoint_type = [string]$VM.CheckpointType; path = [string]$VM.ConfigurationLocation
        config_path = $base + '.vmcx'; state_files = $stateFiles
        disks = $disks; isos = $isos; snapshots = $snapshots; switches = @($switches | Select-Object -Unique)
    }
}

if ($Req.vm_id) {
    $vm = Get-QmVM $Req.vm_id
}
elseif ($Req.name) {
    # Exact, case-sensitive name match: -Name on Get-VM is a wildcard pattern.
    $name = [string]$Req.name
    $found = @(Get-VM | Where-Object { $_.Name -ceq $name })
    if ($found.Count -eq 0) {
        Write-Error -Message ('Hyper-V was unable to find a virtual machine with name "' + $name + '".') -Category ObjectNotFound -ErrorId 'VMNotFound' -TargetObject $name
    }
    if ($found.Count -gt 1) {
        $ids = @(foreach ($f in $found) { $f.Id.ToString() })
        Write-Error -Message ('More than one virtual machine is named "' + $name + '" (ids ' + ($ids -join ', ') + '); ask by vm_id.') -Category InvalidResult -ErrorId 'AmbiguousVMName' -TargetObject $name
    }
    $vm = $found[0]
}
else {
    Write-Error -Message 'describe_vm needs a name or a vm_id.' -Category InvalidArgument -ErrorId 'MissingArgument'
}
$result = [ordered]@{ vm = (Get-QmVMInfo $vm) }

$result | ConvertTo-Json -Compress -Depth 8
