# quickmig-op: list_vms
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig's own checkpoints (named quickmig-<migration id>) of every VM, in one call: what
# the orphan sweep looks for when a migration's record is gone
$all = @(Get-VM)
$ours = @{}
$snaps = @()
if ($all.Count -gt 0) { $snaps = @(Get-VMSnapshot -VM $all | Where-Object { $_.Name -clike 'quickmig-*' }) }
foreach ($snap in $snaps) {
    $key = $snap.VMId.ToString()
    if (-not $ours.ContainsKey($key)) { $ours[$key] = New-Object System.Collections.ArrayList }
    [void]$ours[$key].Add([ordered]@{ id = $snap.Id.ToString(); name = [string]$snap.Name
        created = ([DateTimeOffset]$snap.CreationTime).ToUnixTimeSeconds() })
}
$vms = @(foreach ($vm in $all) {
    $mine = @()
    if ($ours.ContainsKey($vm.Id.ToString())) { $mine = @($ours[$vm.Id.ToString()]) }
    [ordered]@{ id = $vm.Id.ToString(); name = [string]$vm.Name; state = [string]$vm.State
        quickmig_checkpoints = $mine }
})
$result = [ordered]@{ vms = $vms }

$result | ConvertTo-Json -Compress -Depth 8
