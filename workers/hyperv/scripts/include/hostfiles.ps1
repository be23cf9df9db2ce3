# Shared by the operation scripts that delete, overwrite or grant rights on files
# (docs/hyperv-operations.md, "Paths"): scripts.load() puts this text in place of their
# `# quickmig-include: hostfiles` line, which follows their `# quickmig-include: hostpaths`
# line (Assert-QmPath).

function Get-QmFilesInUse {
    # Every file a VM on this host refers to, walked now: the disk chains of its drives and of
    # each checkpoint's (Get-VHD ParentPath, link by link), DVD images, configuration and state
    # files, checkpoint configurations. Keys compare without case, as Windows paths do.
    $used = @{}
    foreach ($vm in @(Get-VM)) {
        $owner = [string]$vm.Name + ' (' + $vm.Id.ToString() + ')'
        $drives = @(Get-VMHardDiskDrive -VM $vm)
        $dvds = @(Get-VMDvdDrive -VM $vm)
        foreach ($snap in @(Get-VMSnapshot -VM $vm)) {
            $drives += @(Get-VMHardDiskDrive -VMSnapshot $snap)
            $dvds += @(Get-VMDvdDrive -VMSnapshot $snap)
            $used[(Join-Path -Path $vm.SnapshotFileLocation -ChildPath ('Snapshots\' + $snap.Id.ToString().ToUpperInvariant() + '.vmcx'))] = $owner
        }
        foreach ($d in $drives) {
            $p = [string]$d.Path
            $n = 0
            while ($p -and $null -eq $d.DiskNumber -and $n -lt 256) {
                $used[$p] = $owner
                $n++
                # A file that is not there ends a chain that is broken already.
                if (-not (Test-Path -LiteralPath $p -PathType Leaf)) { break }
                $vhd = $null
                try { $vhd = Get-VHD -Path $p }
                catch {
                    Write-Error -Message ('Cannot read virtual disk ' + $p + ' of VM ' + $owner + ': ' + $_.Exception.Message + '; nothing was deleted, since it cannot be told which files that VM refers to.') -Category ReadError -ErrorId 'DiskChainUnreadable' -TargetObject $p
                }
                $p = [string]$vhd.ParentPath
            }
        }
        foreach ($dvd in $dvds) {
            if ($dvd.Path) { $used[[string]$dvd.Path] = $owner }
        }
        $base = Join-Path -Path $vm.ConfigurationLocation -ChildPath ('Virtual Machines\' + $vm.Id.ToString().ToUpperInvariant())
        foreach ($ext in '.vmcx', '.vmgs', '.vmrs') { $used[$base + $ext] = $owner }
    }
    $used
}

function Remove-QmFiles($Paths, $Roots) {
    # Remove-Item of each path that is a file no VM refers to; every path is checked before
    # any is deleted. Returns @{ deleted; kept = @(@{ path; used_by }) }.
    $checked = @(foreach ($p in @($Paths)) { Assert-QmPath ([string]$p) $Roots })
    foreach ($p in $checked) {
        if (Test-Path -LiteralPath $p -PathType Container) {
            Write-Error -Message ('quickmig deletes files only; ' + $p + ' is a folder.') -Category InvalidArgument -ErrorId 'NotAFile' -TargetObject $p
        }
    }
    $used = Get-QmFilesInUse
    $deleted = @()
    $kept = @()
    foreach ($p in $checked) {
        if ($used.ContainsKey($p)) {
            $kept += [ordered]@{ path = $p; used_by = $used[$p] }
        }
        elseif (Test-Path -LiteralPath $p -PathType Leaf) {
            # A file that is not there is not an error: an earlier delivery may have removed it.
            Remove-Item -LiteralPath $p -Force
            $deleted += $p
        }
    }
    [ordered]@{ deleted = $deleted; kept = $kept }
}

function Remove-QmEmptyFolders($Paths, $Roots) {
    # The folders of $Paths left empty: only Hyper-V's own folder names and GUID-named VM
    # folders, strictly inside a root, never a root itself.
    $guid = [guid]::Empty
    $dirs = @(foreach ($p in @($Paths)) { [System.IO.Path]::GetDirectoryName([string]$p) })
    foreach ($dir in @($dirs | Select-Object -Unique)) {
        while ($dir -and (Test-Path -LiteralPath $dir -PathType Container)) {
            $inside = $false
            foreach ($root in @($Roots)) {
                $r = ([string]$root).TrimEnd('\')
                if ($dir.Length -gt $r.Length + 1 -and $dir.StartsWith($r + '\', [System.StringComparison]::OrdinalIgnoreCase)) { $inside = $true }
            }
            $leaf = [System.IO.Path]::GetFileName($dir)
            $ours = (@('Virtual Hard Disks', 'Virtual Machines', 'Snapshots') -contains $leaf) -or [guid]::TryParse($leaf, [ref]$guid)
            if (-not $inside -or -not $ours -or @(Get-ChildItem -LiteralPath $dir -Force).Count -gt 0) {
                break
            }
            Remove-Item -LiteralPath $dir -Force
            $dir = [System.IO.Path]::GetDirectoryName($dir)
        }
    }
}
