# Shared by the operation scripts that hash files in the copy engine's 8 MiB blocks
# (file_hash, hash_stream): scripts.load() puts this text in place of their
# `# quickmig-include: chunks` line. No Hyper-V cmdlet here.

function Read-QmBlock($Stream, [byte[]]$Buffer) {
    # Fills $Buffer from $Stream and returns how many bytes it holds: all of it unless the file
    # ends first. Stream.Read may return less than asked before the end, so one Read is not a block.
    $filled = 0
    while ($filled -lt $Buffer.Length) {
        $n = $Stream.Read($Buffer, $filled, $Buffer.Length - $filled)
        if ($n -le 0) { break }
        $filled += $n
    }
    return $filled
}

function ConvertTo-QmHex([byte[]]$Bytes) {
    # A digest as the lowercase hex the copy engine compares (workers/model/chunks.py).
    return -join ($Bytes | ForEach-Object { $_.ToString('x2') })
}
