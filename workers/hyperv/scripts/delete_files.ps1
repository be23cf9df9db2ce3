# quickmig-op: delete_files
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: hostpaths
# quickmig-include: hostfiles

# Every path is checked against the roots before any is deleted; a file a VM on this host
# refers to (walked now) stays, and is listed in kept.
$roots = @($Req.roots)
$out = Remove-QmFiles @($Req.paths) $roots
Remove-QmEmptyFolders @($Req.paths) $roots
$result = [ordered]@{ deleted = $out.deleted; kept = $out.kept }

$result | ConvertTo-Json -Compress -Depth 8
