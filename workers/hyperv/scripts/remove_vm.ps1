# quickmig-op: remove_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

function Remove-QmEmptyFolders([string]$Dir) {
    # Only Hyper-V's own folder names and GUID-named VM folders: never vm_root or a drive root.
    $guid = [guid]::Empty
    while ($Dir -and (Test-Path -LiteralPath $Dir -PathType Container)) {
        $leaf = [System.IO.Path]::GetFileName($Dir)
        $ours = (@('Virtual Hard Disks', 'Virtual Machines', 'Snapshots') -contains $leaf) -or [guid]::TryParse($leaf, [ref]$guid)
        if (-not $ours -or @(Get-ChildItem -LiteralPath $Dir -Force).Count -gt 0) {
            break
        }
        Remove-Item -LiteralPath $Dir -Force
        $Dir = [System.IO.Path]::GetDirectoryName($Dir)
    }
}

$vmId = [guid]$Req.vm_id
$vm = @(Get-VM | Where-Object { $_.Id -eq $vmId })
$removed = $false
if ($vm.Count -gt 0) {
    $state = [string]$vm[0].State
    if (@('Off', 'Saved') -notcontains $state) {
        if (-not $Req.turn_off) {
            # Never take down a running VM unless the caller said so.
            Write-Error -Message ('VM ' + $Req.vm_id + ' is ' + $state + '; remove_vm turns a VM off only when asked (turn_off).') -Category InvalidOperation -ErrorId 'InvalidState' -TargetObject $Req.vm_id
        }
        Stop-VM -VM $vm[0] -TurnOff -Force
    }
    Remove-VM -VM $vm[0] -Force
    $removed = $true
}
$folders = @()
foreach ($p in $Req.delete_paths) {
    if (Test-Path -LiteralPath $p -PathType Leaf) {
        Remove-Item -LiteralPath $p -Force
    }
    $folders += [System.IO.Path]::GetDirectoryName([string]$p)
}
foreach ($dir in @($folders | Select-Object -Unique)) { Remove-QmEmptyFolders $dir }
$result = [ordered]@{ removed = $removed }

$result | ConvertTo-Json -Compress -Depth 8
