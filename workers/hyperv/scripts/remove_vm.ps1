# quickmig-op: remove_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: hostpaths
# quickmig-include: hostfiles

$roots = @($Req.roots)
# Every path is checked before anything changes: a refused one leaves the VM and every file as they are.
$configPath = Assert-QmPath ([string]$Req.config_path) $roots
$paths = @(foreach ($p in @($Req.delete_paths)) { Assert-QmPath ([string]$p) $roots })
$vmId = [guid]$Req.vm_id
$vm = @(Get-VM | Where-Object { $_.Id -eq $vmId })
$removed = $false
$notOurs = $null
$configFiles = @()
if ($vm.Count -gt 0) {
    $vm = $vm[0]
    $base = Join-Path -Path $vm.ConfigurationLocation -ChildPath ('Virtual Machines\' + $vm.Id.ToString().ToUpperInvariant())
    if ($base + '.vmcx' -ne $configPath) {
        # Not the VM quickmig imported or moved (a Hyper-V Replica replica keeps its primary's id,
        # and so may another VM): it is left as it is, running or not. -ne ignores case, as Windows paths do.
        $notOurs = 'VM ' + [string]$vm.Name + ' (' + $vm.Id.ToString() + ') has its configuration at ' + $base + '.vmcx, not ' + $configPath + '; left untouched'
    }
    else {
        $state = [string]$vm.State
        if (@('Off', 'Saved') -notcontains $state) {
            if (-not $Req.turn_off) {
                # Never take down a running VM unless the caller said so.
                Write-Error -Message ('VM ' + $Req.vm_id + ' is ' + $state + '; remove_vm turns a VM off only when asked (turn_off).') -Category InvalidOperation -ErrorId 'InvalidState' -TargetObject $Req.vm_id
            }
            Stop-VM -VM $vm -TurnOff -Force
        }
        # Remove-VM merges a VM's checkpoints into its disks after the VM is gone, in the background
        # (Remove-VM.md): merge them first, so no merge still holds a file deleted below.
        foreach ($snap in @(Get-VMSnapshot -VM $vm)) {
            Remove-VMSnapshot -VMSnapshot $snap
        }
        while ((@(Get-VM | Where-Object { $_.Id -eq $vmId }) | ForEach-Object { [string[]]$_.OperationalStatus }) -contains 'MergingDisks') {
            Start-Sleep -Milliseconds 500
        }
        $configFiles = @(foreach ($ext in '.vmcx', '.vmgs', '.vmrs') { $base + $ext })
        Remove-VM -VM $vm -Force
        $removed = $true
    }
}
# Remove-QmFiles walks every VM still registered: a file one of them refers to stays.
$out = Remove-QmFiles $paths $roots
Remove-QmEmptyFolders (@($configFiles) + @($paths)) $roots
$result = [ordered]@{ removed = $removed; not_ours = $notOurs; deleted = $out.deleted; kept = $out.kept }

$result | ConvertTo-Json -Compress -Depth 8
