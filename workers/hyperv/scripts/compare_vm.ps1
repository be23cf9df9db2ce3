# quickmig-op: compare_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: planned

# Validation before the downtime, of the VM's own configuration copied where the cutover will
# register it: Compare-VM -Register makes a planned VM (ImportSystemDefinition), its disks,
# ISO images and folders are fixed through the report as import_vm fixes them, and the report
# is taken again. Nothing is registered: the planned VM is destroyed whatever happened, and
# what could not be removed is named (left_behind), never passed over in silence.
$configPath = [string]$Req.config_path
$report = $null
$plannedId = $null
$plannedName = ''
$problems = @()
$failure = $null
try {
    $report = Compare-VM -Path $configPath -Register
    $plannedId = $report.VM.Id.ToString()
    $plannedName = [string]$report.VM.Name
    Set-QmPlannedPaths $report (ConvertTo-QmMap $Req.disk_paths) (ConvertTo-QmMap $Req.iso_paths) ([string]$Req.vm_folder) (ConvertTo-QmMap $Req.switch_map) @($Req.eject_isos)
    $report = Compare-VM -CompatibilityReport $report
    $problems = @(foreach ($i in $report.Incompatibilities) {
        [ordered]@{ message_id = [int64]$i.MessageId; message = [string]$i.Message }
    })
}
catch {
    $failure = $_
}
$left = @()
if ($plannedId) {
    try { Remove-QmPlannedVM $plannedId }
    catch { $left += [ordered]@{ kind = 'planned_vm'; id = $plannedId; name = $plannedName; error = $_.Exception.Message } }
}
if ($failure) {
    if ($left.Count -eq 0) { throw $failure }
    Write-Error -Message ($failure.Exception.Message + ' (left behind: planned virtual machine ' + $plannedId + ': ' + $left[0].error + ')') -Category $failure.CategoryInfo.Category -ErrorId 'PlannedVMLeftBehind' -TargetObject $configPath
}
$result = [ordered]@{ incompatibilities = $problems; left_behind = $left }

$result | ConvertTo-Json -Compress -Depth 8
