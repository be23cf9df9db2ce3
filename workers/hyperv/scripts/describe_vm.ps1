# quickmig-op: describe_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo
# quickmig-include: vmfacts

if ($Req.vm_id) {
    $vm = Get-QmVM $Req.vm_id
}
elseif ($Req.name) {
    # Exact, case-sensitive name match: -Name on Get-VM is a wildcard pattern.
    $name = [string]$Req.name
    $found = @(Get-VM | Where-Object { $_.Name -ceq $name })
    if ($found.Count -eq 0) {
        Write-Error -Message ('No virtual machine is named "' + $name + '" on this host.') -Category ObjectNotFound -ErrorId 'VMNotFound' -TargetObject $name
    }
    if ($found.Count -gt 1) {
        $ids = @(foreach ($f in $found) { $f.Id.ToString() })
        Write-Error -Message ('More than one virtual machine is named "' + $name + '" (ids ' + ($ids -join ', ') + '); ask by vm_id.') -Category InvalidResult -ErrorId 'AmbiguousVMName' -TargetObject $name
    }
    $vm = $found[0]
}
else {
    Write-Error -Message 'describe_vm needs a name or a vm_id.' -Category InvalidArgument -ErrorId 'MissingArgument'
}
$result = [ordered]@{ vm = (Get-QmVMInfo $vm) }
if ($Req.preflight) {
    # What pre-flight asks besides (heartbeat, processor, key protector, cluster, replication,
    # devices): only then, as it takes a dozen more cmdlets.
    $result.vm['preflight'] = (Get-QmVMFacts $vm)
}

$result | ConvertTo-Json -Compress -Depth 8
