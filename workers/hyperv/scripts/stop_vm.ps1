# quickmig-op: stop_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo

# Turn off without a guest shutdown; for a Saved VM this discards its saved memory, so a
# kept copy can never be resumed by accident next to the migrated VM.
$vm = Get-QmVM $Req.vm_id
if ([string]$vm.State -ne 'Off') {
    Stop-VM -VM $vm -TurnOff -Force
}
$result = [ordered]@{ state = [string](Get-QmVM $Req.vm_id).State }

$result | ConvertTo-Json -Compress -Depth 8
