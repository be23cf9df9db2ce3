# quickmig-op: stop_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo

# The kept source after a migration: its saved memory goes, so it can never be resumed by
# accident next to the migrated VM, and (with automatic_start_action Nothing) a host restart
# never starts it either.
$vm = Get-QmVM $Req.vm_id
$state = [string]$vm.State
if ($state -eq 'Saved') {
    # The documented way to discard a saved state; Stop-VM's page says nothing of a Saved VM.
    Remove-VMSavedState -VM $vm
}
elseif ($state -ne 'Off') {
    Stop-VM -VM $vm -TurnOff -Force
}
$action = [string]$Req.automatic_start_action
$vm = Get-QmVM $Req.vm_id
if ($action -and [string]$vm.AutomaticStartAction -ne $action) {
    # Off now: a state in which Set-VM may change it by any reading
    Set-VM -VM $vm -AutomaticStartAction $action
    $vm = Get-QmVM $Req.vm_id
}
$result = [ordered]@{ state = [string]$vm.State; automatic_start_action = [string]$vm.AutomaticStartAction }

$result | ConvertTo-Json -Compress -Depth 8
