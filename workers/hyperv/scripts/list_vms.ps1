# quickmig-op: list_vms
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

$vms = @(foreach ($vm in @(Get-VM)) {
    [ordered]@{ id = $vm.Id.ToString(); name = [string]$vm.Name; state = [string]$vm.State }
})
$result = [ordered]@{ vms = $vms }

$result | ConvertTo-Json -Compress -Depth 8
