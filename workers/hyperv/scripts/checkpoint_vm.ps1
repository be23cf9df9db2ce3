# quickmig-op: checkpoint_vm
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

$vm = Get-QmVM $Req.vm_id
$snapName = [string]$Req.snapshot_name
# Checkpoint-VM fails by itself when the VM's CheckpointType is Disabled; the type is never changed here.
$snap = Checkpoint-VM -VM $vm -SnapshotName $snapName -Passthru
if (-not $snap) {
    $snap = @(Get-VMSnapshot -VM $vm | Where-Object { $_.Name -ceq $snapName } | Sort-Object -Property CreationTime) | Select-Object -Last 1
}
if (-not $snap) {
    Write-Error -Message ('Checkpoint-VM returned no checkpoint named "' + $snapName + '".') -Category InvalidResult -ErrorId 'CheckpointMissing'
}
$sid = $snap.Id.ToString()
$info = Get-QmVMInfo (Get-QmVM $Req.vm_id)
$mine = @($info.snapshots | Where-Object { $_.id -eq $sid })
if ($mine.Count -eq 0) {
    Write-Error -Message ('Checkpoint ' + $sid + ' is not listed on the VM after Checkpoint-VM.') -Category InvalidResult -ErrorId 'CheckpointMissing'
}
$result = [ordered]@{ snapshot = $mine[0]; vm = $info }

$result | ConvertTo-Json -Compress -Depth 8
