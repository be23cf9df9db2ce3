# quickmig-op: file_hash
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# The copy engine verifies a copy with this hash, computed where the file landed, instead
# of reading the whole file back over SMB.
if (-not (Test-Path -LiteralPath $Req.path -PathType Leaf)) {
    Write-Error -Message ('file_hash hashes files only; ' + $Req.path + ' is not a file.') -Category InvalidArgument -ErrorId 'NotAFile' -TargetObject $Req.path
}
$hash = Get-FileHash -LiteralPath $Req.path -Algorithm SHA256
$result = [ordered]@{ path = [string]$Req.path; sha256 = $hash.Hash.ToLowerInvariant() }

$result | ConvertTo-Json -Compress -Depth 8
