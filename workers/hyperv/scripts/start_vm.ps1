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
# Then the automatic start action it had before the cutover set it to Nothing: only once the
# VM runs, as nothing documents that Set-VM may change a Saved VM (docs/hyperv-rules.md).
$action = [string]$Req.automatic_start_action
if ($action) {
    $vm = Get-QmVM $Req.vm_id
    if ([string]$vm.AutomaticStartAction -ne $action) {
        Set-VM -VM $vm -AutomaticStartAction $action
    }
}
$result = [ordered]@{ vm = (Get-QmVMInfo (Get-QmVM $Req.vm_id)) }

$result | ConvertTo-Json -Compress -Depth 8
