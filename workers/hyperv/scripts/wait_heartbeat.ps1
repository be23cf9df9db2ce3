# quickmig-op: wait_heartbeat
$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
$Req = @'
__QUICKMIG_ARGS__
'@ | ConvertFrom-Json

# quickmig-include: vminfo

# The Heartbeat integration service, found by its component id so a localized name does not matter.
$heartbeatId = '84EAAE65-2F2E-45F5-9BB5-0E857DC8EB47'
$limit = [double]$Req.timeout_s
$clock = [System.Diagnostics.Stopwatch]::StartNew()
$status = 'unknown'
# Found once by Get-QmVM (which tells "no such VM" apart); the loop then asks for that
# VM alone: Get-VM -Id of an id just seen is quick, where the whole list on a busy host
# would slow every round of a loop that ends the downtime.
$vm = Get-QmVM $Req.vm_id
while ($true) {
    $vm = Get-VM -Id $vm.Id
    if ([string]$vm.State -ne 'Running') {
        Write-Error -Message ('VM ' + $Req.vm_id + ' is ' + $vm.State + '; its heartbeat cannot come up.') -Category InvalidOperation -ErrorId 'InvalidStateForHeartbeat' -TargetObject $Req.vm_id
    }
    $hb = @(Get-VMIntegrationService -VM $vm | Where-Object { ([string]$_.Id).EndsWith($heartbeatId, [System.StringComparison]::OrdinalIgnoreCase) -or $_.Name -eq 'Heartbeat' })
    if ($hb.Count -eq 0) {
        Write-Error -Message ('VM ' + $Req.vm_id + ' has no Heartbeat integration service.') -Category NotEnabled -ErrorId 'NoHeartbeatService' -TargetObject $Req.vm_id
    }
    $status = [string]$hb[0].PrimaryStatusDescription
    if ([string]$hb[0].PrimaryOperationalStatus -eq 'Ok') {
        break
    }
    if ($clock.Elapsed.TotalSeconds -ge $limit) {
        Write-Error -Message ('Heartbeat of VM ' + $Req.vm_id + ' is "' + $status + '", not OK, after ' + [int]$clock.Elapsed.TotalSeconds + ' s.') -Category OperationTimeout -ErrorId 'HeartbeatTimeout' -TargetObject $Req.vm_id
    }
    # The VM is down until this loop sees the heartbeat: poll often (one Get-VM and one
    # Get-VMIntegrationService a round), so the downtime ends within ~0.1 s of it.
    Start-Sleep -Milliseconds 100
}
$result = [ordered]@{ heartbeat = 'OK'; waited_s = [math]::Round($clock.Elapsed.TotalSeconds, 3) }

$result | ConvertTo-Json -Compress -Depth 8
