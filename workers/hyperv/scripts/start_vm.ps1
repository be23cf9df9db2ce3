# quickmig-op: start_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo

$vm = Get-QmVM $Req.vm_id
# A Saved VM resumes from its saved memory state. Already Running: nothing to do (idempotent).
if ([string]$vm.State -ne 'Running') {
    Start-VM -VM $vm
}
$result = [ordered]@{ vm = (Get-QmVMInfo (Get-QmVM $Req.vm_id)) }

$result | ConvertTo-Json -Compress -Depth 8
