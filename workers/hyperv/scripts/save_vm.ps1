# quickmig-op: save_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo

$vm = Get-QmVM $Req.vm_id
# Hyper-V refuses to save a VM that is not Running (InvalidState); that error is the answer.
Save-VM -VM $vm
$result = [ordered]@{ vm = (Get-QmVMInfo (Get-QmVM $Req.vm_id)) }

$result | ConvertTo-Json -Compress -Depth 8
