# quickmig-op: reparent_disks
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: hostpaths
# quickmig-include: hostfiles

# A differencing disk brought back from another host still names its parent by that host's path.
# Set-VHD writes the child: every path is checked against the roots before any disk changes.
$roots = @($Req.roots)
$fixes = @(foreach ($fix in @($Req.parent_fixes)) {
    [ordered]@{ path = (Assert-QmPath ([string]$fix.path) $roots); parent_path = (Assert-QmPath ([string]$fix.parent_path) $roots) }
})
$fixed = @(foreach ($fix in $fixes) {
    Set-VHD -Path $fix.path -ParentPath $fix.parent_path
    [string]$fix.path
})
$result = [ordered]@{ fixed = $fixed }

$result | ConvertTo-Json -Compress -Depth 8
