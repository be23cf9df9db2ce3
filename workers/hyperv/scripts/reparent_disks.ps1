# quickmig-op: reparent_disks
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# A differencing disk brought back from another host still names its parent by that host's path.
$fixed = @(foreach ($fix in @($Req.parent_fixes)) {
    Set-VHD -Path ([string]$fix.path) -ParentPath ([string]$fix.parent_path)
    [string]$fix.path
})
$result = [ordered]@{ fixed = $fixed }

$result | ConvertTo-Json -Compress -Depth 8
