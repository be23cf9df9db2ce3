# quickmig-op: save_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo

$vm = Get-QmVM $Req.vm_id
# The automatic start action first (the cutover asks for Nothing): a host restart must never
# resume the saved copy beside the VM that runs on the destination. Now, while the VM runs:
# nothing documents that Set-VM may change a Saved VM (docs/hyperv-rules.md, "VM lifecycle").
$action = [string]$Req.automatic_start_action
if ($action -and [string]$vm.AutomaticStartAction -ne $action) {
    Set-VM -VM $vm -AutomaticStartAction $action
}
# Hyper-V refuses to save a VM that is not Running (InvalidState); that error is the answer.
Save-VM -VM $vm
$result = [ordered]@{ vm = (Get-QmVMInfo (Get-QmVM $Req.vm_id)) }

$result | ConvertTo-Json -Compress -Depth 8
