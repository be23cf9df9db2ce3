# Shared by the operation scripts that read, delete, overwrite or grant rights on files
# (docs/hyperv-operations.md, "Paths"): scripts.load() puts this text in place of their
# `# quickmig-include: hostpaths` line. The path rules are those of workers/model/hostpaths.py,
# from Windows' "Naming Files, Paths, and Namespaces" and "File Streams", checked again here at
# the moment of use: a path is used only as it was given, never resolved into another one.
# No Hyper-V cmdlet here: a script that needs only these loads no Hyper-V module.

function Get-QmPathProblem([string]$Path) {
    # Why $Path is not a plain, fully qualified local file path; $null if it is.
    if (-not $Path) { return 'it is empty' }
    if ($Path.Length -gt 1024) { return 'it is longer than 1024 characters' }
    if ($Path.StartsWith('\\') -or $Path.StartsWith('\??\')) { return 'it is a UNC or device-namespace path' }
    if ($Path -notmatch '^[A-Za-z]:\\') { return 'it is not a fully qualified path (a drive letter, a colon and a backslash)' }
    foreach ($part in $Path.Substring(3).Split('\')) {
        if ($part -eq '' -or $part -eq '.' -or $part -eq '..') { return 'it has an empty, . or .. component' }
        # A colon names an NTFS alternate data stream (disk.vhdx:s, folder::$INDEX_ALLOCATION).
        if ($part.IndexOfAny([char[]]'<>:"/\|?*') -ge 0) { return ('component ' + $part + ' has a character Windows reserves') }
        foreach ($c in $part.ToCharArray()) {
            if ([int]$c -lt 32) { return ('component ' + $part + ' has a control character') }
        }
        # Windows drops a trailing space or period, so the name would stand for another one.
        if ($part.TrimEnd(' .') -cne $part) { return ('component ' + $part + ' ends in a space or a period') }
        if ($part.Split('.')[0].TrimEnd(' ') -match '^(CON|PRN|AUX|NUL|CONIN\$|CONOUT\$|COM[0-9\u00B9\u00B2\u00B3]|LPT[0-9\u00B9\u00B2\u00B3])$') {
            return ('component ' + $part + ' is a reserved device name')
        }
    }
    $null
}

function Assert-QmPath([string]$Path, $Roots) {
    # $Path as given if it is a plain file path strictly inside one of $Roots, with no reparse
    # point (junction, symbolic link, mount point) below the root; a terminating error otherwise.
    $why = Get-QmPathProblem $Path
    $inside = $null
    if (-not $why) {
        foreach ($root in @($Roots)) {
            $r = ([string]$root).TrimEnd('\')
            if ($r.Length -le 2 -or (Get-QmPathProblem $r)) {
                Write-Error -Message ('Refused root ' + $r + ': it is not a folder quickmig may confine paths to.') -Category InvalidArgument -ErrorId 'RootRefused' -TargetObject $r
            }
            if ($Path.Length -gt $r.Length + 1 -and $Path.StartsWith($r + '\', [System.StringComparison]::OrdinalIgnoreCase)) {
                $inside = $r
            }
        }
        if (-not $inside) { $why = 'it is outside the configured root(s) ' + (@($Roots) -join ', ') }
    }
    if (-not $why) {
        $full = $null
        try { $full = [System.IO.Path]::GetFullPath($Path) } catch { $full = $null }
        if ($full -cne $Path) { $why = 'Windows would read it as ' + $full }
    }
    if (-not $why) {
        $p = $inside
        foreach ($part in $Path.Substring($inside.Length + 1).Split('\')) {
            $p = $p + '\' + $part
            if (Test-Path -LiteralPath $p) {
                $item = Get-Item -LiteralPath $p -Force
                if ($item.Attributes -band [System.IO.FileAttributes]::ReparsePoint) {
                    $why = $p + ' is a reparse point (a link elsewhere)'
                    break
                }
            }
        }
    }
    if ($why) {
        Write-Error -Message ('Refused path ' + $Path + ': ' + $why + '.') -Category InvalidArgument -ErrorId 'PathRefused' -TargetObject $Path
    }
    $Path
}
