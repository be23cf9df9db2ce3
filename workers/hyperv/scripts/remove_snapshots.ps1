# quickmig-op: remove_snapshots
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo

$vm = Get-QmVM $Req.vm_id
$existing = @(Get-VMSnapshot -VM $vm)
foreach ($sid in $Req.snapshot_ids) {
    # A checkpoint that is already gone was merged by an earlier delivery: nothing to do.
    foreach ($snap in $existing) {
        if ($snap.Id -eq [guid]$sid) {
            Remove-VMSnapshot -VMSnapshot $snap
        }
    }
}
# Remove-VMSnapshot returns before a running VM's disks are merged; wait for the merge.
while (([string[]](Get-QmVM $Req.vm_id).OperationalStatus) -contains 'MergingDisks') {
    Start-Sleep -Milliseconds 500
}
$result = [ordered]@{ vm = (Get-QmVMInfo (Get-QmVM $Req.vm_id)) }

$result | ConvertTo-Json -Compress -Depth 8
