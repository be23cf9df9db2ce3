# quickmig-op: hash_stream
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json
# quickmig-include: hostpaths
# quickmig-include: chunks

# One process answers every check of a switchover's downtime copy: it is started before
# the VM is saved, and each range to hash then costs a line on stdin and a line on stdout,
# not a process start. It runs under the driver's STREAM_BOOTSTRAP, which reads this script from
# stdin up to its end-of-script line and leaves the rest of stdin, the requests, in
# $qmRequests (PowerShell's $input: one line per MoveNext, as the lines arrive).
# A request is one JSON line {"path", "scheme": "sha256-chunks-8MiB", "first", "count"};
# the answer is one JSON line {"path", "first", "chunks"} (each 8 MiB block's SHA-256, fewer
# when the file ends sooner), or {"path", "first", "error", "error_id", "category"} for a
# request that is refused or fails: the process carries on with the next one. When stdin
# ends it prints how many it answered. Paths are data, checked with Assert-QmPath against
# $Req.roots at the moment of use; no Hyper-V cmdlet runs, so no Hyper-V module loads.
# SHA256Cng, never [SHA256]::Create() or Get-FileHash: see file_hash.ps1 (FIPS hosts).
if ($null -eq $qmRequests) {
    Write-Error -Message 'hash_stream reads its requests from stdin after its script: run it under the streaming bootstrap.' -Category InvalidOperation -ErrorId 'NoRequestStream'
}
$roots = @($Req.roots)
$block = 8 * 1024 * 1024
$buffer = New-Object byte[] $block
$inner = New-Object System.Security.Cryptography.SHA256Cng
$wholeNumber = { param($v, $low, $high) ($v -is [int] -or $v -is [long]) -and $v -ge $low -and $v -le $high }
$answered = 0
while ($qmRequests.MoveNext()) {
    $line = [string]$qmRequests.Current
    if (-not $line.Trim()) { continue }
    $one = $null
    try {
        $one = $line | ConvertFrom-Json
        if ($one.scheme -ne 'sha256-chunks-8MiB' -or -not (& $wholeNumber $one.first 0 ([long]::MaxValue)) -or
                -not (& $wholeNumber $one.count 1 128)) {
            Write-Error -Message 'A request hashes a range of at most 128 chunks: scheme sha256-chunks-8MiB, first and count as whole numbers >= 0 and 1..128.' -Category InvalidArgument -ErrorId 'InvalidParameter' -TargetObject ([string]$one.path)
        }
        $path = Assert-QmPath ([string]$one.path) $roots
        if (-not (Test-Path -LiteralPath $path -PathType Leaf)) {
            Write-Error -Message ('hash_stream hashes files only; ' + $path + ' is not a file.') -Category InvalidArgument -ErrorId 'NotAFile' -TargetObject $path
        }
        $chunks = New-Object System.Collections.Generic.List[string]
        $stream = [System.IO.File]::Open($path, [System.IO.FileMode]::Open, [System.IO.FileAccess]::Read, [System.IO.FileShare]::ReadWrite)
        try {
            [void]$stream.Seek([long]$one.first * $block, [System.IO.SeekOrigin]::Begin)
            while ($chunks.Count -lt $one.count) {
                $filled = Read-QmBlock $stream $buffer
                if ($filled -eq 0) { break }
                $chunks.Add((ConvertTo-QmHex ($inner.ComputeHash($buffer, 0, $filled))))
                if ($filled -lt $block) { break }
            }
        } finally {
            $stream.Dispose()
        }
        $answer = [ordered]@{ path = $path; first = [long]$one.first; chunks = [string[]]$chunks.ToArray() }
    } catch {
        $target = $null
        $at = $null
        if ($null -ne $one) { $target = [string]$one.path; $at = $one.first }
        $answer = [ordered]@{
            path = $target; first = $at; error = $_.Exception.Message
            error_id = [string]$_.FullyQualifiedErrorId; category = [string]$_.CategoryInfo.Category
        }
    }
    [Console]::Out.WriteLine(($answer | ConvertTo-Json -Compress -Depth 4))
    [Console]::Out.Flush()
    $answered++
}
$result = [ordered]@{ answered = $answered }

$result | ConvertTo-Json -Compress -Depth 8
