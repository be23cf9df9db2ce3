# quickmig-op: delete_files
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

$deleted = @(foreach ($p in $Req.paths) {
    if (Test-Path -LiteralPath $p -PathType Container) {
        Write-Error -Message ('delete_files removes files only; ' + $p + ' is a folder.') -Category InvalidArgument -ErrorId 'NotAFile' -TargetObject $p
    }
    # A file that is not there is not an error: an earlier delivery may have removed it.
    if (Test-Path -LiteralPath $p -PathType Leaf) {
        Remove-Item -LiteralPath $p -Force
        [string]$p
    }
})
$result = [ordered]@{ deleted = $deleted }

$result | ConvertTo-Json -Compress -Depth 8
