# quickmig-op: file_hash
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json
# quickmig-include: chunks

# The copy engine verifies a copy with this digest, computed where the file landed, instead
# of reading the whole file back over SMB. 'sha256-chunks-8MiB' is the copy engine's digest
# (workers/model/chunks.py): the SHA-256 of the SHA-256s of the file's 8 MiB blocks, so the
# copier hashes every byte once, chunk by chunk, in any order; 'sha256' is the SHA-256 of
# the whole file (what Get-FileHash -Algorithm SHA256 gives).
# Always SHA256Cng (Windows' own CNG implementation): on .NET Framework [SHA256]::Create()
# and Get-FileHash may give SHA256Managed, whose constructor throws on a host that enforces
# FIPS-validated algorithms (the "System cryptography: Use FIPS compliant algorithms"
# policy). SHA256Cng gives the same digests and is allowed there.
if (-not (Test-Path -LiteralPath $Req.path -PathType Leaf)) {
    Write-Error -Message ('file_hash hashes files only; ' + $Req.path + ' is not a file.') -Category InvalidArgument -ErrorId 'NotAFile' -TargetObject $Req.path
}
# With first and count (sha256-chunks-8MiB only) it hashes that range of blocks and lists
# their digests: the copy engine checks a copy's landed blocks while the rest is copying.
$ranged = ($null -ne $Req.PSObject.Properties['first']) -or ($null -ne $Req.PSObject.Properties['count'])
if ($ranged) {
    $wholeNumber = { param($v, $low, $high) ($v -is [int] -or $v -is [long]) -and $v -ge $low -and $v -le $high }
    if ($Req.scheme -ne 'sha256-chunks-8MiB' -or -not (& $wholeNumber $Req.first 0 ([long]::MaxValue)) -or
            -not (& $wholeNumber $Req.count 1 128)) {
        Write-Error -Message 'first and count (a range of at most 128 chunks) go with the scheme sha256-chunks-8MiB only, as whole numbers >= 0 and 1..128.' -Category InvalidArgument -ErrorId 'InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetFileHash' -TargetObject $Req.path
    }
}
$chunks = New-Object System.Collections.Generic.List[string]
if ($Req.scheme -eq 'sha256') {
    $whole = New-Object System.Security.Cryptography.SHA256Cng
    $stream = [System.IO.File]::Open($Req.path, [System.IO.FileMode]::Open, [System.IO.FileAccess]::Read, [System.IO.FileShare]::ReadWrite)
    try {
        $digest = ConvertTo-QmHex ($whole.ComputeHash($stream))
    } finally {
        $stream.Dispose()
    }
} elseif ($Req.scheme -eq 'sha256-chunks-8MiB') {
    $block = 8 * 1024 * 1024
    $buffer = New-Object byte[] $block
    $outer = New-Object System.Security.Cryptography.SHA256Cng
    $inner = New-Object System.Security.Cryptography.SHA256Cng
    $stream = [System.IO.File]::Open($Req.path, [System.IO.FileMode]::Open, [System.IO.FileAccess]::Read, [System.IO.FileShare]::ReadWrite)
    try {
        if ($ranged) { [void]$stream.Seek([long]$Req.first * $block, [System.IO.SeekOrigin]::Begin) }
        while (-not $ranged -or $chunks.Count -lt $Req.count) {
            $filled = Read-QmBlock $stream $buffer
            if ($filled -eq 0) { break }
            $chunk = $inner.ComputeHash($buffer, 0, $filled)
            if ($ranged) { $chunks.Add((ConvertTo-QmHex $chunk)) }
            [void]$outer.TransformBlock($chunk, 0, $chunk.Length, $null, 0)
            if ($filled -lt $block) { break }
        }
        [void]$outer.TransformFinalBlock([byte[]]::new(0), 0, 0)
        $digest = ConvertTo-QmHex $outer.Hash
    } finally {
        $stream.Dispose()
    }
} else {
    Write-Error -Message ('file_hash knows the schemes sha256 and sha256-chunks-8MiB, not ' + $Req.scheme + '.') -Category InvalidArgument -ErrorId 'UnknownScheme' -TargetObject $Req.scheme
}
$result = [ordered]@{ path = [string]$Req.path; scheme = [string]$Req.scheme; digest = $digest }
if ($ranged) {
    $result.first = [long]$Req.first
    $result.chunks = [string[]]$chunks.ToArray()
}

$result | ConvertTo-Json -Compress -Depth 8
