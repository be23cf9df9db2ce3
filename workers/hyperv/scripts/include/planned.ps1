# Shared by compare_vm and import_vm (docs/hyperv-operations.md): the planned VM that
# Compare-VM makes (ImportSystemDefinition), fixed through its report and removed again.

function ConvertTo-QmMap($Object) {
    # JSON object -> case-insensitive hashtable (Windows paths compare without case).
    $map = @{}
    if ($Object) {
        foreach ($p in $Object.PSObject.Properties) { $map[$p.Name] = [string]$p.Value }
    }
    $map
}

function Set-QmPlannedPaths($Report, $DiskMap, $IsoMap, [string]$Folder, $SwitchMap, $Eject) {
    # Fixed through the compatibility report, as Compare-VM's example 2 fixes a switch: the
    # planned VM's disks and ISO images are pointed at their copies here, its checkpoint
    # file location and Smart Paging folder (the source host's folders, kept by -Register)
    # at this host's VM folder, and each network adapter whose switch is mapped connected to
    # this host's switch, before the report is taken again. A drive whose image is in $Eject
    # (--eject-unmovable-isos) is emptied (Set-VMDvdDrive -Path $null, its example 2): the
    # planned VM would otherwise name an image this host cannot reach.
    $ejectSet = @{}
    foreach ($p in @($Eject)) { if ($p) { $ejectSet[[string]$p] = $true } }
    foreach ($drive in @(Get-VMHardDiskDrive -VM $Report.VM)) {
        $old = [string]$drive.Path
        if ($old -and $DiskMap.ContainsKey($old)) {
            Set-VMHardDiskDrive -VMHardDiskDrive $drive -Path $DiskMap[$old]
        }
    }
    foreach ($drive in @(Get-VMDvdDrive -VM $Report.VM)) {
        $old = [string]$drive.Path
        if ($old -and $IsoMap.ContainsKey($old)) {
            Set-VMDvdDrive -VMDvdDrive $drive -Path $IsoMap[$old]
        }
        elseif ($old -and $ejectSet.ContainsKey($old)) {
            Set-VMDvdDrive -VMDvdDrive $drive -Path $null
        }
    }
    if ($Folder) {
        Set-VM -VM $Report.VM -SnapshotFileLocation $Folder -SmartPagingFilePath $Folder
    }
    if ($SwitchMap) {
        foreach ($adapter in @(Get-VMNetworkAdapter -VM $Report.VM)) {
            $old = [string]$adapter.SwitchName
            if ($old -and $SwitchMap.ContainsKey($old)) {
                Connect-VMNetworkAdapter -VMNetworkAdapter $adapter -SwitchName $SwitchMap[$old]
            }
        }
    }
}

function Remove-QmPlannedVM([string]$Id) {
    # A planned VM lasts until it is realized or destroyed; none of the Hyper-V cmdlets is
    # documented to remove one, DestroySystem is (Microsoft's planned-VM sample does this).
    # Already gone (realized, or destroyed before): nothing to do.
    $ns = 'root\virtualization\v2'
    $planned = @(Get-CimInstance -Namespace $ns -ClassName 'Msvm_PlannedComputerSystem' | Where-Object { $_.Name -eq $Id })
    if ($planned.Count -eq 0) { return }
    $service = Get-CimInstance -Namespace $ns -ClassName 'Msvm_VirtualSystemManagementService'
    $out = Invoke-CimMethod -InputObject $service -MethodName 'DestroySystem' -Arguments @{ AffectedSystem = $planned[0] }
    $code = [int]$out.ReturnValue
    if ($code -eq 4096) {
        # Method Parameters Checked - Job Started: wait for the job (Msvm_ConcreteJob JobState
        # 2 New, 3 Starting, 4 Running; 7 Completed)
        $job = $out.Job
        do {
            Start-Sleep -Milliseconds 100
            $job = Get-CimInstance -InputObject $job
        } while (@(2, 3, 4) -contains [int]$job.JobState)
        if ([int]$job.JobState -ne 7) {
            Write-Error -Message ('DestroySystem of planned virtual machine ' + $Id + ' failed: ' + [string]$job.ErrorDescription) -Category InvalidResult -ErrorId 'DestroyPlannedFailed' -TargetObject $Id
        }
    }
    elseif ($code -ne 0) {
        Write-Error -Message ('DestroySystem of planned virtual machine ' + $Id + ' returned ' + $code + '.') -Category InvalidResult -ErrorId 'DestroyPlannedFailed' -TargetObject $Id
    }
}
