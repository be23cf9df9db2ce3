# Shared by the operation scripts that name one VM by id or answer with a VMInfo
# (docs/hyperv-operations.md): scripts.load() puts this text in place of their
# `# quickmig-include: vminfo` line, so every host receives one self-contained script.

function Get-QmVM([string]$Id) {
    # One VM by its id, found in Get-VM's list. Not Get-VM -Id: for an id the host does not
    # have it throws Hyper-V's own error, an InvalidArgument like any bad argument, worded in
    # the host's display language. Here "no such VM" is decided by this script, and said by
    # the error id VMNotFound, which means the same in every language; a failure of Get-VM
    # itself (access denied, service down) stays that failure.
    $want = [guid]$Id
    $found = @(Get-VM | Where-Object { $_.Id -eq $want })
    if ($found.Count -eq 0) {
        Write-Error -Message ('No virtual machine with ID ' + $Id + ' on this host.') -Category ObjectNotFound -ErrorId 'VMNotFound' -TargetObject $Id
    }
    $found[0]
}

function Get-QmVMInfo($VM) {
    # The VMInfo shape of docs/hyperv-operations.md.
    $id = $VM.Id.ToString()
    $base = Join-Path -Path $VM.ConfigurationLocation -ChildPath ('Virtual Machines\' + $id.ToUpperInvariant())
    $disks = @(foreach ($d in @(Get-VMHardDiskDrive -VM $VM)) {
        $chain = @()
        $p = [string]$d.Path
        while ($p -and $null -eq $d.DiskNumber -and $chain.Count -lt 64) {
            $chain += $p
            $vhd = $null
            try { $vhd = Get-VHD -Path $p }
            catch {
                Write-Error -Message ('Cannot read virtual disk ' + $p + ' of VM ' + $id + ': ' + $_.Exception.Message) -Category ReadError -ErrorId 'DiskChainUnreadable'
            }
            $p = [string]$vhd.ParentPath
        }
        [ordered]@{
            controller_type = [string]$d.ControllerType; controller_number = [int]$d.ControllerNumber
            controller_location = [int]$d.ControllerLocation; path = [string]$d.Path; chain = $chain
        }
    })
    $dvdDrives = @(Get-VMDvdDrive -VM $VM)
    $isos = @(foreach ($dvd in $dvdDrives) { if ($dvd.Path -like '*.iso') { [string]$dvd.Path } })
    $dvds = @(foreach ($dvd in $dvdDrives) {
        [ordered]@{
            controller_type = [string]$dvd.ControllerType; controller_number = [int]$dvd.ControllerNumber
            controller_location = [int]$dvd.ControllerLocation; path = [string]$dvd.Path
        }
    })
    $snapshots = @(foreach ($s in @(Get-VMSnapshot -VM $VM)) {
        $sid = $s.Id.ToString()
        $sbase = Join-Path -Path $VM.SnapshotFileLocation -ChildPath ('Snapshots\' + $sid.ToUpperInvariant())
        # Every file of the checkpoint: its configuration, guest state and (Standard, taken
        # while running) memory; Import-VM -Register needs them all beside the VM's files.
        $sfiles = @(foreach ($ext in '.vmcx', '.vmgs', '.vmrs') {
            if (Test-Path -LiteralPath ($sbase + $ext) -PathType Leaf) { $sbase + $ext }
        })
        [ordered]@{ id = $sid; name = [string]$s.Name; config_path = $sbase + '.vmcx'; files = $sfiles }
    })
    $nics = @(Get-VMNetworkAdapter -VM $VM)
    $switches = @(foreach ($n in $nics) { if ($n.SwitchName) { [string]$n.SwitchName } })
    # What the destination must keep of each adapter: its type, its access VLAN (0: untagged)
    # and a static MAC address ('' when Hyper-V assigns one from the host's pool).
    $adapters = @(foreach ($n in $nics) {
        $vlan = 0
        if ([string]$n.VlanSetting.OperationMode -eq 'Access') { $vlan = [int]$n.VlanSetting.AccessVlanId }
        $mac = ''
        if (-not $n.DynamicMacAddressEnabled) { $mac = [string]$n.MacAddress }
        [ordered]@{ 'switch' = [string]$n.SwitchName; legacy = [bool]$n.IsLegacy; vlan_id = $vlan; static_mac = $mac }
    })
    $stateFiles = @(foreach ($ext in '.vmcx', '.vmgs', '.vmrs') {
        if (Test-Path -LiteralPath ($base + $ext) -PathType Leaf) { $base + $ext }
    })
    [ordered]@{
        id = $id; name = [string]$VM.Name; state = [string]$VM.State; generation = [int]$VM.Generation
        version = [string]$VM.Version; memory_startup_bytes = [int64]$VM.MemoryStartup
        memory_assigned_bytes = [int64]$VM.MemoryAssigned; memory_maximum_bytes = [int64]$VM.MemoryMaximum
        dynamic_memory_enabled = [bool]$VM.DynamicMemoryEnabled; automatic_start_action = [string]$VM.AutomaticStartAction
        checkpoint_type = [string]$VM.CheckpointType; path = [string]$VM.ConfigurationLocation
        snapshot_location = [string]$VM.SnapshotFileLocation; smart_paging_path = [string]$VM.SmartPagingFilePath
        config_path = $base + '.vmcx'; state_files = $stateFiles
        disks = $disks; isos = $isos; dvd_drives = $dvds; snapshots = $snapshots; switches = @($switches | Select-Object -Unique)
        adapters = $adapters
    }
}
