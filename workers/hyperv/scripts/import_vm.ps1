# quickmig-op: import_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo
# quickmig-include: hostpaths
# quickmig-include: hostfiles
# quickmig-include: planned

function Grant-QmVMAccess([string]$Path, [string]$Account, [string]$Rights) {
    # Copied files lost the per-VM ACE; Hyper-V's worker process runs as NT VIRTUAL MACHINE\<VMId>.
    $null = Assert-QmPath $Path $roots
    $out = & icacls.exe $Path /grant ($Account + ':' + $Rights) /Q
    if ($LASTEXITCODE -ne 0) {
        Write-Error -Message ('icacls could not grant ' + $Account + ' ' + $Rights + ' on ' + $Path + ': ' + (@($out) -join ' ')) -Category WriteError -ErrorId 'GrantFailed' -TargetObject $Path
    }
}

$roots = @($Req.roots)
$configPath = Assert-QmPath ([string]$Req.config_path) $roots
$diskMap = ConvertTo-QmMap $Req.disk_paths
$isoMap = ConvertTo-QmMap $Req.iso_paths
# Set-VHD writes each child and icacls grants rights: every path is checked before anything changes.
foreach ($p in @($diskMap.Values) + @($isoMap.Values)) { $null = Assert-QmPath $p $roots }
foreach ($fix in $Req.parent_fixes) {
    $null = Assert-QmPath ([string]$fix.path) $roots
    $null = Assert-QmPath ([string]$fix.parent_path) $roots
}
# the folder the VM's checkpoints and Smart Paging file will live in
if ($Req.vm_folder) { $null = Assert-QmPath ([string]$Req.vm_folder) $roots }

# 1. Differencing disks point at their parents by path: re-point them at the copies.
foreach ($fix in $Req.parent_fixes) {
    Set-VHD -Path ([string]$fix.path) -ParentPath ([string]$fix.parent_path)
}

# 2. Compare, fix and import in this one process: a compatibility report does not outlive it.
# -Register keeps the id and the files where they are, and looks for the checkpoints in
# Snapshots beside the configuration's folder; the disks, ISO images and the folders the
# configuration still names on the source host are fixed through the report. A planned VM
# that is not realized is destroyed: it would keep the VM's id and its configuration in use.
$report = Compare-VM -Path $configPath -Register
$plannedId = $report.VM.Id.ToString()
try {
    Set-QmPlannedPaths $report $diskMap $isoMap ([string]$Req.vm_folder) (ConvertTo-QmMap $Req.switch_map) @($Req.eject_isos)
    $report = Compare-VM -CompatibilityReport $report
    $left = @(foreach ($i in $report.Incompatibilities) { [string]$i.MessageId + ': ' + [string]$i.Message })
    if ($left.Count -gt 0) {
        Write-Error -Message ('Cannot register ' + $configPath + ' on this host: ' + ($left -join '; ')) -Category InvalidData -ErrorId 'IncompatibleVM' -TargetObject $configPath
    }
    $imported = Import-VM -CompatibilityReport $report
}
catch {
    $failure = $_
    try { Remove-QmPlannedVM $plannedId }
    catch {
        Write-Error -Message ($failure.Exception.Message + ' (left behind: planned virtual machine ' + $plannedId + ': ' + $_.Exception.Message + ')') -Category $failure.CategoryInfo.Category -ErrorId 'PlannedVMLeftBehind' -TargetObject $configPath
    }
    throw $failure
}

# 3. Give the VM's own account its files back before anyone starts it.
$info = Get-QmVMInfo (Get-QmVM $imported.Id.ToString())
$account = 'NT VIRTUAL MACHINE\' + $info.id.ToUpperInvariant()
foreach ($f in $info.state_files) { Grant-QmVMAccess $f $account '(F)' }
foreach ($disk in $info.disks) {
    foreach ($f in $disk.chain) { Grant-QmVMAccess $f $account '(F)' }
}
# only the images quickmig copied here: a library share's image (a UNC path) is not ours to change
foreach ($f in @($isoMap.Values)) { Grant-QmVMAccess $f $account '(R)' }
$result = [ordered]@{ vm = $info }

$result | ConvertTo-Json -Compress -Depth 8
