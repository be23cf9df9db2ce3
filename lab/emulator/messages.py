"""The host's display language: every message an emulated host writes, in that language.

A Windows host words its messages in its display language: a cmdlet's error message, a
Compare-VM incompatibility, a WS-Management fault's reason, even PowerShell's "At line:1
char:1" ("In Zeile:1 Zeichen:1" on a German host). What stays the same in every language is
what a program may rely on: an error's CategoryInfo category, its FullyQualifiedErrorId, an
incompatibility's MessageId, a fault's codes. A lab started with `quickmig lab up --locale
de-DE` has hosts that speak German, so nothing in quickmig can get away with reading English.

The emulator's parts raise their errors in English (the catalog's source language, as in
gettext); `translate` turns a finished English message into the host's language by the
catalog below, at the one place where messages leave the host (wsman.py). Parts of a
message that are themselves messages (a disk's error inside a start failure, the list of
problems of an import) are translated in turn. Every message the emulator's parts can
raise must have its entry (tests/unit/test_emulator_locale.py finds them in the source):
a new message without one is sent in English, with a warning in the emulator's log.

What powershell.exe writes when nothing sets its output encoding is in the host's OEM code
page, which also follows the display language (`oem_codepage`).
"""
from __future__ import annotations

import functools
import logging
import re

log = logging.getLogger("lab.emulator.messages")

DEFAULT_LOCALE = "en-US"
LOCALES = ("en-US", "de-DE")

# The OEM code page of each display language: [Console]::OutputEncoding of a powershell.exe
# that nobody told otherwise.
_OEM_CODEPAGE = {"en-US": "cp437", "de-DE": "cp850"}

# PowerShell's line that says where an error happened, in each language.
_POSITION = {"en-US": "At line:{line} char:{char}", "de-DE": "In Zeile:{line} Zeichen:{char}"}

# (English, German). `{field}` stands for any text; a field that is itself a message is
# translated too, a field named `problems` is a "; "-separated list of messages, and a
# field found in _WORDS is replaced by its word. `{{` and `}}` are literal braces.
CATALOG: list[tuple[str, str]] = [
    # -- finding a VM ------------------------------------------------------------------
    ('Hyper-V was unable to find a virtual machine with ID "{id}".',
     'Hyper-V konnte keinen virtuellen Computer mit der ID "{id}" finden.'),
    ("No virtual machine with ID {id} on this host.",
     "Auf diesem Host gibt es keinen virtuellen Computer mit der ID {id}."),
    ('No virtual machine is named "{name}" on this host.',
     'Auf diesem Host heißt kein virtueller Computer "{name}".'),
    ('More than one virtual machine is named "{name}" (ids {ids}); ask by vm_id.',
     'Mehrere virtuelle Computer heißen "{name}" (IDs {ids}); fragen Sie nach der vm_id.'),
    ("Cannot validate argument on parameter 'vm_id': it must be a VM id (GUID).",
     "Das Argument für den Parameter 'vm_id' kann nicht überprüft werden: Es muss eine VM-ID (GUID) sein."),
    ("vm_id must be a VM id (GUID).", "vm_id muss eine VM-ID (GUID) sein."),
    ("describe_vm needs 'name' or 'vm_id'.", "describe_vm benötigt 'name' oder 'vm_id'."),
    # -- power and state ---------------------------------------------------------------
    ("'{name}' failed to {verb}. The operation cannot be performed while the object is in its current state. "
     "(Virtual machine ID {id}, state {state})",
     "'{name}' konnte {verb}. Der Vorgang kann im aktuellen Zustand des Objekts nicht ausgeführt "
     "werden. (ID des virtuellen Computers {id}, Zustand {state})"),
    ("'{name}' failed to start. Synthetic SCSI Controller: Failed to power on with error 'The system cannot "
     "find the file specified.' ({path})",
     "'{name}' konnte nicht gestartet werden. Synthetischer SCSI-Controller: Fehler beim Einschalten: "
     "'Das System kann die angegebene Datei nicht finden.' ({path})"),
    ("'{name}' failed to start: the virtual hard disk chain is broken: {detail}",
     "'{name}' konnte nicht gestartet werden: Die Kette der virtuellen Festplatten ist unterbrochen: {detail}"),
    ("'{name}' failed to start. The ISO image '{path}' was not found.",
     "'{name}' konnte nicht gestartet werden. Das ISO-Abbild '{path}' wurde nicht gefunden."),
    ("'{name}' failed to restore from its saved state: the saved state file '{path}' was not found.",
     "'{name}' konnte nicht aus dem gespeicherten Zustand wiederhergestellt werden: Die Datei '{path}' "
     "wurde nicht gefunden."),
    ("'{name}' failed to restore from its saved state: {detail}",
     "'{name}' konnte nicht aus dem gespeicherten Zustand wiederhergestellt werden: {detail}"),
    ("'{name}' failed to restore: the saved state file belongs to VM {id}.",
     "'{name}' konnte nicht wiederhergestellt werden: Die Datei des gespeicherten Zustands gehört zur VM {id}."),
    ("VM {id} is {state}; its heartbeat cannot come up.",
     "Die VM {id} ist im Zustand {state}; ihr Takt kann nicht einsetzen."),
    ('Heartbeat of VM {id} is "{status}", not OK, after {seconds} s.',
     'Der Takt der VM {id} ist nach {seconds} s "{status}", nicht OK.'),
    ("timeout_s must be a number of seconds between 0 and 3600.",
     "timeout_s muss eine Anzahl Sekunden zwischen 0 und 3600 sein."),
    ("VM {id} is Running; remove_vm turns a VM off only when asked (turn_off).",
     "Die VM {id} wird ausgeführt; remove_vm schaltet eine VM nur auf Wunsch aus (turn_off)."),
    ("turn_off must be true or false.", "turn_off muss true oder false sein."),
    # -- checkpoints and disks ---------------------------------------------------------
    ("Checkpoint operation failed for '{name}': checkpoints are disabled for this virtual machine "
     "(CheckpointType is Disabled).",
     "Fehler beim Prüfpunktvorgang für '{name}': Prüfpunkte sind für diesen virtuellen Computer deaktiviert "
     "(CheckpointType ist Disabled)."),
    ("Checkpoint operation failed for '{name}': checkpoints are not supported for virtual machines with "
     "pass-through disks.",
     "Fehler beim Prüfpunktvorgang für '{name}': Prüfpunkte werden für virtuelle Computer mit "
     "Passthrough-Datenträgern nicht unterstützt."),
    ("Cannot remove checkpoint '{snapshot}' of '{name}': its disk '{path}' is not in the VM's disk chain.",
     "Der Prüfpunkt '{snapshot}' von '{name}' kann nicht entfernt werden: Sein Datenträger '{path}' gehört "
     "nicht zur Datenträgerkette der VM."),
    ("snapshot_name must be 1-{n} characters.", "snapshot_name muss 1 bis {n} Zeichen lang sein."),
    ("snapshot_ids must be a list of checkpoint ids.", "snapshot_ids muss eine Liste von Prüfpunkt-IDs sein."),
    ("Set-VHD: the virtual hard disk '{path}' was not found.",
     "Set-VHD: Die virtuelle Festplatte '{path}' wurde nicht gefunden."),
    ("Failed to set the parent of '{path}' to '{parent}': {detail}",
     "Das übergeordnete Element von '{path}' konnte nicht auf '{parent}' festgelegt werden: {detail}"),
    ("parent_fixes must be a list of {{path, parent_path}}.",
     "parent_fixes muss eine Liste von {{path, parent_path}} sein."),
    # -- files and paths ---------------------------------------------------------------
    ("Cannot validate argument: the path {path} is not a non-empty string.",
     "Das Argument kann nicht überprüft werden: Der Pfad {path} ist keine nicht leere Zeichenfolge."),
    ("Cannot validate argument: the path is longer than 1024 characters.",
     "Das Argument kann nicht überprüft werden: Der Pfad ist länger als 1024 Zeichen."),
    ("Access is denied. The path '{path}' is outside this host's virtual machine storage '{root}'.",
     "Zugriff verweigert. Der Pfad '{path}' liegt außerhalb des Speichers für virtuelle Computer '{root}' "
     "dieses Hosts."),
    ("Access is denied. '{path}' is outside this host's virtual machine storage '{root}'.",
     "Zugriff verweigert. '{path}' liegt außerhalb des Speichers für virtuelle Computer '{root}' dieses Hosts."),
    ("Access is denied. The path '{path}' leaves this host's storage.",
     "Zugriff verweigert. Der Pfad '{path}' verlässt den Speicher dieses Hosts."),
    ("The path '{path}' is not a valid file path (empty, '.' or '..' component, or a character Windows "
     "forbids).",
     "Der Pfad '{path}' ist kein gültiger Dateipfad (leerer Bestandteil, '.' oder '..', oder ein Zeichen, das "
     "Windows nicht zulässt)."),
    ("{what} must be a list of host paths.", "{what} muss eine Liste von Hostpfaden sein."),
    ("{what} must map old host paths to new host paths.", "{what} muss alte Hostpfade auf neue abbilden."),
    ("delete_files removes files only; {path} is a folder.",
     "delete_files entfernt nur Dateien; {path} ist ein Ordner."),
    ("Cannot remove item {path}: The process cannot access the file '{file}' because it is being used by "
     "another process.",
     "Das Element {path} kann nicht entfernt werden: Der Prozess kann nicht auf die Datei '{file}' zugreifen, "
     "da sie von einem anderen Prozess verwendet wird."),
    ("path must be a host path.", "path muss ein Hostpfad sein."),
    ("file_hash knows the schemes sha256 and sha256-chunks-8MiB, not {scheme}.",
     "file_hash kennt die Verfahren sha256 und sha256-chunks-8MiB, nicht {scheme}."),
    ("file_hash hashes files only; {path} is not a file.",
     "file_hash berechnet Hashwerte nur für Dateien; {path} ist keine Datei."),
    ("hash_stream reads its requests from stdin after its script: run it under the streaming bootstrap.",
     "hash_stream liest seine Anfragen nach seinem Skript von stdin: starten Sie es mit dem Streaming-Bootstrap."),
    ("A request hashes a range of at most {n} chunks: scheme {scheme}, first and count as whole numbers "
     ">= 0 and 1..{m}.",
     "Eine Anfrage berechnet Hashwerte für einen Bereich von höchstens {n} Blöcken: Verfahren {scheme}, first "
     "und count als ganze Zahlen >= 0 und 1..{m}."),
    ("hash_stream hashes files only; {path} is not a file.",
     "hash_stream berechnet Hashwerte nur für Dateien; {path} ist keine Datei."),
    ("first and count (a range of at most {n} chunks) go with the scheme {scheme} only, as whole numbers "
     ">= 0 and 1..{m}.",
     "first und count (ein Bereich von höchstens {n} Blöcken) gelten nur für das Verfahren {scheme}, als "
     "ganze Zahlen >= 0 und 1..{m}."),
    ('Exception calling "{method}" with "0" argument(s): "This implementation is not part of the Windows '
     'Platform FIPS validated cryptographic algorithms."',
     'Ausnahme beim Aufrufen von "{method}" mit 0 Argument(en): "Diese Implementierung ist nicht Bestandteil '
     'der auf der Windows-Plattform FIPS-überprüften kryptografischen Algorithmen."'),
    # -- what may be removed, and where (roots) ----------------------------------------
    ("Cannot read virtual disk {path} of VM {owner}: {detail}; nothing was deleted, since it cannot be told "
     "which files that VM refers to.",
     "Die virtuelle Festplatte {path} des virtuellen Computers {owner} kann nicht gelesen werden: {detail}; "
     "es wurde nichts gelöscht, da sich nicht feststellen lässt, auf welche Dateien dieser virtuelle Computer "
     "verweist."),
    ("roots must be a non-empty list of host folders.",
     "roots muss eine nicht leere Liste von Ordnern des Hosts sein."),
    ("Refused root {root}: it is not a folder quickmig may confine paths to ({detail})",
     "Stammordner {root} abgelehnt: Auf diesen Ordner kann quickmig keine Pfade beschränken ({detail})"),
    ("Refused path {path}: it is outside the configured root(s) {roots}.",
     "Pfad {path} abgelehnt: Er liegt außerhalb der konfigurierten Stammordner {roots}."),
    ("Refused path {path}: {link} is a reparse point (a link elsewhere).",
     "Pfad {path} abgelehnt: {link} ist ein Analysepunkt (eine Verknüpfung an einen anderen Ort)."),
    ("The path '{path}' is not a valid file path (empty, '.' or '..' component, a character Windows reserves, "
     "a trailing dot or space, or a reserved device name).",
     "Der Pfad '{path}' ist kein gültiger Dateipfad (leerer Bestandteil, '.' oder '..', ein von Windows "
     "reserviertes Zeichen, ein Punkt oder Leerzeichen am Ende oder ein reservierter Gerätename)."),
    ("vm_id must be a VM id (a GUID).", "vm_id muss eine VM-ID (eine GUID) sein."),
    ("path must be a folder under {root}.", "path muss ein Ordner unterhalb von {root} sein."),
    ("A virtual machine with identifier {id} already exists on {host}.",
     "Auf {host} ist bereits ein virtueller Computer mit der ID {id} vorhanden."),
    ("The file '{path}' already exists.", "Die Datei '{path}' ist bereits vorhanden."),
    ("Connect-VMNetworkAdapter: the virtual switch '{switch}' was not found on this host.",
     "Connect-VMNetworkAdapter: Der virtuelle Switch '{switch}' wurde auf diesem Host nicht gefunden."),
    ("switch_map must map switch names to switch names.", "switch_map muss Switchnamen auf Switchnamen abbilden."),
    ("eject_isos must be a list of ISO image paths.", "eject_isos muss eine Liste von ISO-Abbildpfaden sein."),
    ("unc_paths must be a list of UNC paths.", "unc_paths muss eine Liste von UNC-Pfaden sein."),
    ("Add-VMDvdDrive: the ISO image '{path}' is not a file path this host reaches.",
     "Add-VMDvdDrive: Das ISO-Abbild '{path}' ist kein Dateipfad, den dieser Host erreicht."),
    ("generation must be 1 or 2.", "generation muss 1 oder 2 sein."),
    ("legacy_adapter, vlan_id and static_mac need a network adapter (a switch).",
     "legacy_adapter, vlan_id und static_mac brauchen einen Netzwerkadapter (einen Switch)."),
    ("legacy_adapter must be true or false.", "legacy_adapter muss true oder false sein."),
    ("A legacy network adapter can be added to a Generation 1 virtual machine only.",
     "Ein älterer Netzwerkadapter kann nur einem virtuellen Computer der Generation 1 hinzugefügt werden."),
    ("Cannot validate argument on parameter 'VlanId': it must be from 1 to 4094.",
     "Das Argument für den Parameter 'VlanId' kann nicht überprüft werden: Es muss zwischen 1 und 4094 liegen."),
    ("static_mac must be a unicast MAC address of 12 hexadecimal digits.",
     "static_mac muss eine Unicast-MAC-Adresse aus 12 Hexadezimalziffern sein."),
    ("'{name}' failed to start: the MAC address {mac} is in use by the running virtual machine '{other}'.",
     "'{name}' konnte nicht gestartet werden: Die MAC-Adresse {mac} wird vom ausgeführten virtuellen Computer "
     "'{other}' verwendet."),
    ("disks must be a whole number from 1 to {count}.", "disks muss eine ganze Zahl von 1 bis {count} sein."),
    ("checkpoints must be a whole number from 0 to {count}.",
     "checkpoints muss eine ganze Zahl von 0 bis {count} sein."),
    ("state must be Running, Off or Saved, and the VM started.",
     "state muss Running, Off oder Saved sein, und der virtuelle Computer gestartet."),
    ("golden must be a name of letters, digits, '.', '_' or '-', without parent.",
     "golden muss ein Name aus Buchstaben, Ziffern, '.', '_' oder '-' sein, ohne parent."),
    ("Checkpoint operation failed for '{name}': the virtual machine already has {count} checkpoints, the most "
     "Hyper-V allows ({max}).",
     "Fehler beim Prüfpunktvorgang für '{name}': Der virtuelle Computer hat bereits {count} Prüfpunkte, so viele "
     "wie Hyper-V höchstens zulässt ({max})."),
    ("disk_folders must be folders under {roots}.", "disk_folders müssen Ordner unterhalb von {roots} sein."),
    ("parent must be another disk under {root}.",
     "parent muss eine andere Festplatte unterhalb von {root} sein."),
    ("The parent '{path}' is not a virtual hard disk: {detail}",
     "Das übergeordnete Element '{path}' ist keine virtuelle Festplatte: {detail}"),
    # -- automatic start and memory (New-VM, Set-VM) ------------------------------------
    ("Cannot validate argument on parameter 'AutomaticStartAction': it must be one of {actions}.",
     "Das Argument für den Parameter 'AutomaticStartAction' kann nicht überprüft werden: Es muss eines der "
     "folgenden sein: {actions}."),
    ("dynamic_memory must be true or false.", "dynamic_memory muss true oder false sein."),
    ("memory_maximum_mb and memory_assigned_mb go with dynamic_memory only.",
     "memory_maximum_mb und memory_assigned_mb gelten nur mit dynamic_memory."),
    ("memory_maximum_mb must be a whole number from memory_mb ({mb}) to {max}.",
     "memory_maximum_mb muss eine ganze Zahl von memory_mb ({mb}) bis {max} sein."),
    ("memory_assigned_mb must be a whole number from 1 to memory_maximum_mb ({max}, at most 65536 in the lab).",
     "memory_assigned_mb muss eine ganze Zahl von 1 bis memory_maximum_mb ({max}, im Lab höchstens 65536) sein."),
    # -- what a host offers a VM: memory, processor, key protector, devices -------------
    ("'{name}' could not initialize. Not enough memory in the system to start the virtual machine {vm} with ram "
     "size {size} megabytes. (Virtual machine ID {id})",
     "'{name}' konnte nicht initialisiert werden. Nicht genügend Arbeitsspeicher im System, um den virtuellen "
     "Computer {vm} mit einer RAM-Größe von {size} Megabyte zu starten. (ID des virtuellen Computers {id})"),
    ("'{name}' failed to restore. The virtual machine '{vm}' is using processor-specific features not supported "
     "on physical computer '{host}'. To allow for migration of this virtual machine to physical computers with "
     "different processors, modify the virtual machine settings to limit the processor features used by the "
     "virtual machine. (Virtual machine ID {id})",
     "'{name}' konnte nicht wiederhergestellt werden. Der virtuelle Computer '{vm}' verwendet prozessorspezifische "
     "Features, die auf dem physischen Computer '{host}' nicht unterstützt werden. Ändern Sie die Einstellungen des "
     "virtuellen Computers, um die von ihm verwendeten Prozessorfeatures einzuschränken, damit er auf physische "
     "Computer mit anderen Prozessoren migriert werden kann. (ID des virtuellen Computers {id})"),
    ("The virtual machine is using processor-specific features not supported on physical computer '{host}'. To "
     "allow for migration of this virtual machine to physical computers with different processors, modify the "
     "virtual machine settings to limit the processor features used by the virtual machine.",
     "Der virtuelle Computer verwendet prozessorspezifische Features, die auf dem physischen Computer '{host}' "
     "nicht unterstützt werden. Ändern Sie die Einstellungen des virtuellen Computers, um die von ihm verwendeten "
     "Prozessorfeatures einzuschränken, damit er auf physische Computer mit anderen Prozessoren migriert werden "
     "kann."),
    ("'{name}' failed to start. The key protector for the virtual machine '{vm}' could not be unwrapped. "
     "HostGuardianService returned: One or more arguments are invalid (0x80070057). Details are included in the "
     "HostGuardianService-Client event log. (Virtual machine ID {id})",
     "'{name}' konnte nicht gestartet werden. Die Schlüsselschutzvorrichtung für den virtuellen Computer '{vm}' "
     "konnte nicht entpackt werden. HostGuardianService hat Folgendes zurückgegeben: Mindestens ein Argument ist "
     "ungültig (0x80070057). Details finden Sie im Ereignisprotokoll HostGuardianService-Client. (ID des virtuellen "
     "Computers {id})"),
    ("'{name}' failed to start. Synthetic Fibre Channel Port: the virtual SAN '{san}' does not exist on this host. "
     "(Virtual machine ID {id})",
     "'{name}' konnte nicht gestartet werden. Synthetischer Fibre Channel-Port: Das virtuelle SAN '{san}' ist auf "
     "diesem Host nicht vorhanden. (ID des virtuellen Computers {id})"),
    ("'{name}' failed to save. The virtual machine cannot be saved while it has {device}. (Virtual machine ID {id})",
     "'{name}' konnte nicht gespeichert werden. Der virtuelle Computer kann nicht gespeichert werden, solange er "
     "{device} hat. (ID des virtuellen Computers {id})"),
    ("A virtual TPM needs a guardian with its private keys on this host.",
     "Ein virtuelles TPM benötigt auf diesem Host einen Überwacher mit seinen privaten Schlüsseln."),
    ("{what} must be true or false.", "{what} muss true oder false sein."),
    ("No Contact", "Kein Kontakt"),
    ("Lost Communication", "Kommunikation unterbrochen"),
    ("OK", "OK"),
    ("preflight must be true or false.", "preflight muss true oder false sein."),
    ("compatibility_info must be the base64 text of a compatibility blob.",
     "compatibility_info muss der Base64-Text eines Kompatibilitätsblobs sein."),
    ("guardians must be true or false.", "guardians muss true oder false sein."),
    ('Exception calling "FromBase64String" with "1" argument(s): "The input is not a valid Base-64 string as it '
     'contains a non-base 64 character, more than two padding characters, or an illegal character among the '
     'padding characters."',
     'Ausnahme beim Aufrufen von "FromBase64String" mit 1 Argument(en):  "Die Eingabe ist keine gültige '
     'Base-64-Zeichenfolge, da sie ein Nicht-Base-64-Zeichen, mehr als zwei Auffüllzeichen oder ein ungültiges '
     'Zeichen zwischen den Auffüllzeichen enthält."'),
    # -- validation and import: planned VMs, checkpoints, folders ----------------------
    ("Checkpoint operation failed for '{name}': the checkpoint file location '{path}' is not available on "
     "this host.",
     "Fehler beim Prüfpunktvorgang für '{name}': Der Speicherort der Prüfpunktdateien '{path}' ist auf diesem "
     "Host nicht verfügbar."),
    ("{message} (left behind: planned virtual machine {id}: {error})",
     "{message} (zurückgelassen: geplanter virtueller Computer {id}: {error})"),
    ("The file '{path}' is the configuration of a checkpoint, not of a virtual machine: checkpoints are "
     "imported with their virtual machine.",
     "Die Datei '{path}' ist die Konfiguration eines Prüfpunkts, nicht die eines virtuellen Computers: "
     "Prüfpunkte werden mit ihrem virtuellen Computer importiert."),
    ("Failed to import the virtual machine: a virtual machine with identifier {id} already exists on {host} "
     "(-Register keeps the ID).",
     "Fehler beim Importieren des virtuellen Computers: Auf {host} ist bereits ein virtueller Computer mit der "
     "ID {id} vorhanden (-Register behält die ID bei)."),
    ("The virtual machine configuration '{path}' is in use by planned virtual machine {id} on {host}.",
     "Die Konfiguration des virtuellen Computers '{path}' wird auf {host} vom geplanten virtuellen Computer "
     "{id} verwendet."),
    ("Set-VM: the folder '{path}' does not exist.", "Set-VM: Der Ordner '{path}' ist nicht vorhanden."),
    ("The {what} '{path}' of the virtual machine is not a folder of this host.",
     "{what} '{path}' des virtuellen Computers ist kein Ordner dieses Hosts."),
    ("checkpoint '{name}' ({id})", "Prüfpunkt '{name}' ({id})"),
    ("Could not find the {label}: {files} missing (its files are looked for in '{folder}').",
     "{label} wurde nicht gefunden: {files} fehlt (die Dateien werden in '{folder}' gesucht)."),
    ("The {label} is damaged: {detail}", "{label} ist beschädigt: {detail}"),
    ("'{path}' is not the configuration of the {label}.", "'{path}' ist nicht die Konfiguration von {label}."),
    ("The {label} refers to the virtual hard disk '{path}', which is not in the disk chain of the virtual "
     "machine.",
     "{label} verweist auf die virtuelle Festplatte '{path}', die nicht in der Datenträgerkette des "
     "virtuellen Computers ist."),
    ("The planned virtual machine {id} no longer exists.",
     "Der geplante virtuelle Computer {id} ist nicht mehr vorhanden."),
    ("vm_folder must be a host folder.", "vm_folder muss ein Ordner des Hosts sein."),
    # -- configurations: Compare-VM and Import-VM --------------------------------------
    ("The virtual machine configuration file '{path}' was not found.",
     "Die Konfigurationsdatei des virtuellen Computers '{path}' wurde nicht gefunden."),
    ("The file '{path}' is not a valid virtual machine configuration.",
     "Die Datei '{path}' ist keine gültige Konfiguration eines virtuellen Computers."),
    ("vm_root must be a host folder.", "vm_root muss ein Hostordner sein."),
    ("Could not find Ethernet switch '{switch}'.", "Der Ethernet-Switch '{switch}' wurde nicht gefunden."),
    ("Could not find the ISO image '{path}'.", "Das ISO-Abbild '{path}' wurde nicht gefunden."),
    ("Could not find the virtual hard disk '{path}'.", "Die virtuelle Festplatte '{path}' wurde nicht gefunden."),
    ("Virtual hard disk '{path}' cannot be used here: {detail}",
     "Die virtuelle Festplatte '{path}' kann hier nicht verwendet werden: {detail}"),
    ("The virtual hard disk '{path}' is damaged: {detail}",
     "Die virtuelle Festplatte '{path}' ist beschädigt: {detail}"),
    ("The virtual machine's configuration version {version} is not supported by this host (supported: "
     "{supported}).",
     "Die Konfigurationsversion {version} des virtuellen Computers wird von diesem Host nicht unterstützt "
     "(unterstützt: {supported})."),
    ("The virtual machine uses processor features of {vendor} that this host ({host}) does not have; it cannot "
     "be restored here.",
     "Der virtuelle Computer verwendet Prozessorfunktionen von {vendor}, die dieser Host ({host}) nicht hat; "
     "er kann hier nicht wiederhergestellt werden."),
    ("Failed to import the virtual machine: a virtual machine with identifier {id} already exists on {host} "
     "(Import-VM -Register keeps the ID).",
     "Fehler beim Importieren des virtuellen Computers: Ein virtueller Computer mit der ID {id} ist auf {host} "
     "bereits vorhanden (Import-VM -Register behält die ID bei)."),
    ("Cannot register {path} on this host: {problems}",
     "{path} kann auf diesem Host nicht registriert werden: {problems}"),
    ("virtual hard disk '{path}' (in the chain of '{leaf}') was not found",
     "die virtuelle Festplatte '{path}' (in der Kette von '{leaf}') wurde nicht gefunden"),
    ("virtual hard disk chain of '{path}' is broken: {detail}",
     "die Kette der virtuellen Festplatten von '{path}' ist unterbrochen: {detail}"),
    ("ISO image '{path}' was not found", "das ISO-Abbild '{path}' wurde nicht gefunden"),
    ("checkpoint '{name}' refers to '{path}', which is not in the disk chain",
     "der Prüfpunkt '{name}' verweist auf '{path}', das nicht zur Datenträgerkette gehört"),
    ("configuration version {version} is not supported (supported: {supported})",
     "die Konfigurationsversion {version} wird nicht unterstützt (unterstützt: {supported})"),
    ("Ethernet switch '{switch}' was not found", "der Ethernet-Switch '{switch}' wurde nicht gefunden"),
    ("saved state file '{path}' belongs to VM {id}", "die Zustandsdatei '{path}' gehört zur VM {id}"),
    ("saved state file '{path}' was not found", "die Zustandsdatei '{path}' wurde nicht gefunden"),
    # -- the operation itself ----------------------------------------------------------
    ("The operation '{op}' is not supported by this host.",
     "Der Vorgang '{op}' wird von diesem Host nicht unterstützt."),
    ("The arguments must be a JSON object.", "Die Argumente müssen ein JSON-Objekt sein."),
    ("The script is not a shipped quickmig operation script: {detail}",
     "Das Skript ist kein mitgeliefertes quickmig-Vorgangsskript: {detail}"),
    # -- WS-Management faults ----------------------------------------------------------
    ("The Windows Remote Shell cannot process the request. The server is already executing the maximum number "
     "of concurrent shells a user can remotely open on the same system. Retry later.",
     "Die Windows-Remoteshell kann die Anforderung nicht verarbeiten. Auf dem Server wird bereits die maximale "
     "Anzahl gleichzeitiger Shells ausgeführt, die ein Benutzer remote auf demselben System öffnen kann. "
     "Versuchen Sie es später erneut."),
    ("The request for the Windows Remote Shell with ShellId {id} failed because the shell was not found on the "
     "server.",
     "Fehler bei der Anforderung für die Windows-Remoteshell mit der ShellId {id}, da die Shell auf dem "
     "Server nicht gefunden wurde."),
    ("The Windows Remote Shell received a request to perform an operation on a command identifier that does not "
     "exist.",
     "Die Windows-Remoteshell hat eine Anforderung für einen Vorgang mit einer nicht vorhandenen "
     "Befehls-ID empfangen."),
    ("The WS-Management service cannot complete the operation within the time specified in OperationTimeout.",
     "Der WS-Verwaltungsdienst kann den Vorgang nicht innerhalb der in OperationTimeout angegebenen Zeit "
     "abschließen."),
    ("Document type declarations are not accepted.", "Dokumenttypdeklarationen werden nicht akzeptiert."),
    ("The request is not well-formed XML: {detail}", "Die Anforderung ist kein wohlgeformtes XML: {detail}"),
    ("The request is not a SOAP 1.2 envelope.", "Die Anforderung ist kein SOAP 1.2-Umschlag."),
    ("The resource URI {uri} is not supported.", "Der Ressourcen-URI {uri} wird nicht unterstützt."),
    ("The action {action} is not supported by the service.",
     "Die Aktion {action} wird vom Dienst nicht unterstützt."),
    ("WINRS_CODEPAGE must be a number.", "WINRS_CODEPAGE muss eine Zahl sein."),
    ("The Command request has no rsp:CommandLine.", "Die Command-Anforderung enthält keine rsp:CommandLine."),
    ("Too many commands in this shell.", "Zu viele Befehle in dieser Shell."),
    ("Unknown input stream {name}.", "Unbekannter Eingabedatenstrom {name}."),
    ("The input stream of this command is already closed.",
     "Der Eingabedatenstrom dieses Befehls ist bereits geschlossen."),
    ("The stdin stream is not valid base64.", "Der stdin-Datenstrom ist kein gültiges Base64."),
    ("The script is too large.", "Das Skript ist zu groß."),
    ("The Receive request has no rsp:DesiredStream.", "Die Receive-Anforderung enthält keinen rsp:DesiredStream."),
    ("The Signal request has no rsp:Signal.", "Die Signal-Anforderung enthält kein rsp:Signal."),
]

# Words that fill a field of a message ('{name}' failed to {verb}).
_WORDS = {"de-DE": {"change state": "den Zustand nicht ändern", "start": "nicht starten", "save": "nicht speichern",
                    "delete the saved state": "den gespeicherten Zustand nicht löschen",
                    "modify its settings": "seine Einstellungen nicht ändern",
                    "checkpoint file location": "Der Speicherort der Prüfpunktdateien",
                    "an assigned device": "ein zugewiesenes Gerät",
                    "a GPU partition": "eine GPU-Partition",
                    "an SR-IOV virtual function": "eine virtuelle SR-IOV-Funktion",
                    "Smart Paging folder": "Der Smart Paging-Ordner"}}

_FIELD_RE = re.compile(r"\{\{|\}\}|\{([a-z_]+)\}")


def _compile(template: str) -> re.Pattern:
    parts, pos = [], 0
    for m in _FIELD_RE.finditer(template):
        parts.append(re.escape(template[pos:m.start()]))
        if m.group(1):
            parts.append(f"(?P<{m.group(1)}>.+?)" if m.group(1) != "problems" else f"(?P<{m.group(1)}>.+)")
        else:
            parts.append(re.escape(m.group(0)[0]))
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts), re.S)


@functools.cache
def _compiled() -> list[tuple[re.Pattern, int]]:
    return [(_compile(en), i) for i, (en, _) in enumerate(CATALOG)]


def _render(template: str, fields: dict[str, str]) -> str:
    return _FIELD_RE.sub(lambda m: fields[m.group(1)] if m.group(1) else m.group(0)[0], template)


def known(text: str) -> bool:
    """Whether the catalog has an entry for this English message."""
    return _lookup(text) is not None


def _lookup(text: str) -> tuple[int, dict[str, str]] | None:
    for pattern, i in _compiled():
        m = pattern.fullmatch(text)
        if m:
            return i, m.groupdict()
    return None


def _field(name: str, value: str, locale: str) -> str:
    if name == "problems":
        return "; ".join(_translate(p, locale) or p for p in value.split("; "))
    word = _WORDS.get(locale, {}).get(value)
    if word is not None:
        return word
    return _translate(value, locale) or value


def _translate(text: str, locale: str) -> str | None:
    found = _lookup(text)
    if found is None:
        return None
    i, fields = found
    german = CATALOG[i][1]
    return _render(german, {k: _field(k, v, locale) for k, v in fields.items()})


def translate(text: str, locale: str) -> str:
    """`text` (an English message of the emulator) as a host of `locale` words it."""
    if locale == DEFAULT_LOCALE or not text:
        return text
    if locale not in LOCALES:
        raise ValueError(f"unknown locale {locale!r} (known: {', '.join(LOCALES)})")
    out = "\n".join(_translate(line, locale) or _untranslated(line) for line in text.split("\n"))
    return out


def _untranslated(line: str) -> str:
    log.warning("no translation for the message %r: sent as it is", line[:200])
    return line


def check_locale(locale: object) -> str:
    if locale not in LOCALES:
        raise ValueError(f"unknown locale {locale!r}; a lab host speaks one of {', '.join(LOCALES)}")
    return locale  # type: ignore[return-value]


def oem_codepage(locale: str) -> str:
    """The code page powershell.exe writes in on a host of `locale` when nothing sets
    [Console]::OutputEncoding."""
    return _OEM_CODEPAGE[locale]


def position_template(locale: str) -> str:
    """PowerShell's "At line:{line} char:{char}", as a host of `locale` writes it."""
    return _POSITION[locale]
