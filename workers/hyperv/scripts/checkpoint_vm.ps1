# quickmig-op: checkpoint_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo

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
