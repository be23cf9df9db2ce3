# quickmig-op: file_hash
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# The copy engine verifies a copy with this digest, computed where the file landed, instead
# of reading the whole file back over SMB. 'sha256-chunks-8MiB' is the copy engine's digest
# (workers/smb/chunks.py): the SHA-256 of the SHA-256s of the file's 8 MiB blocks, so the
# copier hashes every byte once, chunk by chunk, in any order; 'sha256' is Get-FileHash's.
if (-not (Test-Path -LiteralPath $Req.path -PathType Leaf)) {
    Write-Error -Message ('file_hash hashes files only; ' + $Req.path + ' is not a file.') -Category InvalidArgument -ErrorId 'NotAFile' -TargetObject $Req.path
}
if ($Req.scheme -eq 'sha256') {
    $digest = (Get-FileHash -LiteralPath $Req.path -Algorithm SHA256).Hash.ToLowerInvariant()
} elseif ($Req.scheme -eq 'sha256-chunks-8MiB') {
    $block = 8 * 1024 * 1024
    $buffer = New-Object byte[] $block
    $outer = [System.Security.Cryptography.SHA256]::Create()
    $inner = [System.Security.Cryptography.SHA256]::Create()
    $stream = [System.IO.File]::Open($Req.path, [System.IO.FileMode]::Open, [System.IO.FileAccess]::Read, [System.IO.FileShare]::ReadWrite)
    try {
        while ($true) {
            $filled = 0  # Read may return less than asked before the end: fill the whole block
            while ($filled -lt $block) {
                $n = $stream.Read($buffer, $filled, $block - $filled)
                if ($n -le 0) { break }
                $filled += $n
            }
            if ($filled -eq 0) { break }
            $chunk = $inner.ComputeHash($buffer, 0, $filled)
            [void]$outer.TransformBlock($chunk, 0, $chunk.Length, $null, 0)
            if ($filled -lt $block) { break }
        }
        [void]$outer.TransformFinalBlock([byte[]]::new(0), 0, 0)
        $digest = -join ($outer.Hash | ForEach-Object { $_.ToString('x2') })
    } finally {
        $stream.Dispose()
    }
} else {
    Write-Error -Message ('file_hash knows the schemes sha256 and sha256-chunks-8MiB, not ' + $Req.scheme + '.') -Category InvalidArgument -ErrorId 'UnknownScheme' -TargetObject $Req.scheme
}
$result = [ordered]@{ path = [string]$Req.path; scheme = [string]$Req.scheme; digest = $digest }

$result | ConvertTo-Json -Compress -Depth 8
