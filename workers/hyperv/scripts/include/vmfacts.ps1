# Shared by the operations that answer pre-flight's questions about a VM (describe_vm with
# `preflight`, docs/hyperv-operations.md): scripts.load() puts this text in place of their
# `# quickmig-include: vmfacts` line. Each fact comes from the cmdlet Microsoft documents
# for it (docs/hyperv-rules.md, "What a host offers: pre-flight facts"); none of this runs in
# the downtime.

function Get-QmVMFacts($VM) {
    # The Heartbeat integration service, found by its component id so a localized name does
    # not matter. PrimaryOperationalStatus is an enum (the same in every language);
    # PrimaryStatusDescription is a display text, for people.
    $heartbeatId = '84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47'
    $hb = @(Get-VMIntegrationService -VM $VM | Where-Object { ([string]$_.Id).EndsWith($heartbeatId, [System.StringComparison]::OrdinalIgnoreCase) -or $_.Name -eq 'Heartbeat' })
    $heartbeat = $null
    if ($hb.Count -gt 0) {
        $heartbeat = [ordered]@{
            enabled = [bool]$hb[0].Enabled; status = [string]$hb[0].PrimaryStatusDescription
            ok = ([string]$hb[0].PrimaryOperationalStatus -eq 'Ok')
        }
    }
    $processor = Get-VMProcessor -VM $VM
    # GetSystemCompatibilityInfo of Msvm_VirtualSystemMigrationService: an opaque blob that the
    # destination's CheckSystemCompatibilityInfo reads to tell whether a quick migration of
    # this VM there is possible (processor features among what it compares).
    $ns = 'root\virtualization\v2'
    $id = $VM.Id.ToString()
    $system = @(Get-CimInstance -Namespace $ns -ClassName 'Msvm_ComputerSystem' | Where-Object { $_.Name -eq $id })
    if ($system.Count -eq 0) {
        Write-Error -Message ('No Msvm_ComputerSystem for virtual machine ' + $id + '.') -Category ObjectNotFound -ErrorId 'ComputerSystemNotFound' -TargetObject $id
    }
    $service = Get-CimInstance -Namespace $ns -ClassName 'Msvm_VirtualSystemMigrationService'
    $out = Invoke-CimMethod -InputObject $service -MethodName 'GetSystemCompatibilityInfo' -Arguments @{ ComputerSystem = $system[0] }
    if ([int]$out.ReturnValue -ne 0) {
        Write-Error -Message ('GetSystemCompatibilityInfo of virtual machine ' + $id + ' returned ' + [int]$out.ReturnValue + '.') -Category InvalidResult -ErrorId 'CompatibilityInfoFailed' -TargetObject $id
    }
    $blob = [Convert]::ToBase64String([byte[]]$out.CompatibilityInfo)
    # A virtual TPM (or a shielded VM, or encrypted state) starts only where a guardian of its
    # key protector can unwrap it: name them.
    $security = Get-VMSecurity -VM $VM
    $needsKey = [bool]$security.TpmEnabled -or [bool]$security.Shielded -or [bool]$security.EncryptStateAndVmMigrationTraffic
    $guardians = @()
    if ($needsKey) {
        $kp = ConvertTo-HgsKeyProtector -Bytes (Get-VMKeyProtector -VM $VM)
        $guardians = @(foreach ($g in @(@($kp.Owner) + @($kp.Guardians))) {
            if ($g) {
                [ordered]@{
                    name = [string]$g.Name; encryption_thumbprint = [string]$g.EncryptionCertificate.Thumbprint
                    signing_thumbprint = [string]$g.SigningCertificate.Thumbprint
                }
            }
        })
    }
    # Get-VMReplication with no VM lists every replication-enabled VM of the host.
    $replication = $null
    $rep = @(Get-VMReplication | Where-Object { $_.VMId -eq $VM.Id })
    if ($rep.Count -gt 0) {
        $replication = [ordered]@{ mode = [string]$rep[0].ReplicationMode; state = [string]$rep[0].ReplicationState }
    }
    # Devices that do not move with the VM's files.
    $devices = @()
    foreach ($d in @(Get-VMAssignableDevice -VM $VM)) {
        $devices += [ordered]@{ kind = 'assignable'; name = [string]$d.InstanceID; location_path = [string]$d.LocationPath }
    }
    foreach ($g in @(Get-VMGpuPartitionAdapter -VM $VM)) {
        $devices += [ordered]@{ kind = 'gpu_partition'; id = [string]$g.Id }
    }
    foreach ($n in @(Get-VMNetworkAdapter -VM $VM)) {
        if ([int]$n.IovWeight -gt 0) {
            $devices += [ordered]@{ kind = 'sriov'; adapter = [string]$n.Name; 'switch' = [string]$n.SwitchName; iov_weight = [int]$n.IovWeight }
        }
    }
    foreach ($f in @(Get-VMFibreChannelHba -VM $VM)) {
        $devices += [ordered]@{ kind = 'fibre_channel'; san = [string]$f.SanName }
    }
    [ordered]@{
        heartbeat = $heartbeat
        compatibility_for_migration = [bool]$processor.CompatibilityForMigrationEnabled
        compatibility_info = $blob
        security = [ordered]@{
            tpm_enabled = [bool]$security.TpmEnabled; shielded = [bool]$security.Shielded
            encrypt_state = [bool]$security.EncryptStateAndVmMigrationTraffic
        }
        key_protector = $guardians
        is_clustered = [bool]$VM.IsClustered
        replication = $replication
        devices = $devices
    }
}
