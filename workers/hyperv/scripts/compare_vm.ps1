# quickmig-op: compare_vm
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# A dry run: Compare-VM -Copy -GenerateNewId builds a throw-away planned VM under a scratch
# folder of vm_root; nothing is imported, copied or registered, and the scratch folder goes.
$scratch = Join-Path -Path ([string]$Req.vm_root) -ChildPath ('.quickmig-compare\' + [guid]::NewGuid().ToString())
$vhdDir = Join-Path -Path $scratch -ChildPath 'Virtual Hard Disks'
$null = [System.IO.Directory]::CreateDirectory($vhdDir)
try {
    $report = Compare-VM -Path ([string]$Req.config_path) -Copy -GenerateNewId -VirtualMachinePath $scratch -SnapshotFilePath $scratch -SmartPagingFilePath $scratch -VhdDestinationPath $vhdDir
    $problems = @(foreach ($i in $report.Incompatibilities) {
        [ordered]@{ message_id = [int64]$i.MessageId; message = [string]$i.Message }
    })
}
finally {
    Remove-Item -LiteralPath $scratch -Recurse -Force -ErrorAction SilentlyContinue
}
$result = [ordered]@{ incompatibilities = $problems }

$result | ConvertTo-Json -Compress -Depth 8
