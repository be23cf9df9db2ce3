"""CLIXML stderr: what PowerShell writes, what we read back, and which exception it becomes."""
from __future__ import annotations

import pickle

import pytest

from lab.emulator.clixml import format_clixml_error, format_clixml_progress, format_error_lines
from workers.hyperv import errors
from workers.hyperv.errors import (
    AccessDenied,
    AlreadyExists,
    HyperVError,
    InvalidVMState,
    OperationTimeout,
    TransportError,
    VMNotFound,
    error_from_stderr,
    parse_clixml,
)

NS = 'xmlns="http://schemas.microsoft.com/powershell/2004/04"'

# Shaped like what powershell.exe 5.1 writes over WinRM for a command it does not know
# (a wrapped message line keeps the space it was cut at; every line ends in CRLF).
REAL_COMMAND_NOT_FOUND = (
    "#< CLIXML\r\n"
    f'<Objs Version="1.1.0.1" {NS}>'
    '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
    "<T>System.Object</T></TN><MS><I64 N=\"SourceId\">1</I64><PR N=\"Record\"><AV>Preparing modules for "
    "first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR>"
    "</MS></Obj>"
    '<S S="Error">fake : The term \'fake\' is not recognized as the name of a cmdlet, function, script '
    "file, or operable program. Check _x000D__x000A_</S>"
    '<S S="Error">the spelling of the name, or if a path was included, verify that the path is correct '
    "and try again._x000D__x000A_</S>"
    '<S S="Error">At line:1 char:1_x000D__x000A_</S>'
    '<S S="Error">+ fake cmdlet_x000D__x000A_</S>'
    '<S S="Error">+ ~~~~_x000D__x000A_</S>'
    '<S S="Error">    + CategoryInfo          : ObjectNotFound: (fake:String) [], CommandNotFoundException'
    "_x000D__x000A_</S>"
    '<S S="Error">    + FullyQualifiedErrorId : CommandNotFoundException_x000D__x000A_</S>'
    '<S S="Error"> _x000D__x000A_</S></Objs>'
)


def err(message, category, fqid, **kw):
    return format_clixml_error(message, category, fqid, **kw)


# -- parse_clixml ----------------------------------------------------------------------

def test_error_strings_are_decoded_one_line_each_and_progress_is_ignored():
    lines = parse_clixml(REAL_COMMAND_NOT_FOUND)
    assert lines[0].startswith("fake : The term 'fake' is not recognized")
    assert lines[0].endswith("Check ")
    assert lines[2] == "At line:1 char:1"
    assert "Preparing modules" not in "".join(lines)
    assert lines[-1] == " "


def test_progress_only_stderr_has_no_errors():
    assert parse_clixml(format_clixml_progress()) == []
    assert parse_clixml(format_clixml_progress(count=3)) == []
    assert parse_clixml("") == []
    assert parse_clixml(b"") == []


def test_warnings_and_verbose_records_are_not_errors():
    text = (f'#< CLIXML\r\n<Objs Version="1.1.0.1" {NS}><S S="warning">careful_x000D__x000A_</S>'
            '<S S="verbose">chatty_x000D__x000A_</S><S S="Information">hi</S></Objs>')
    assert parse_clixml(text) == []


def test_escapes_entities_and_non_ascii_are_decoded():
    text = (f'#< CLIXML\r\n<Objs Version="1.1.0.1" {NS}>'
            '<S S="Error">VM \u00dcberweisung "prod" 01 &amp; &lt;x&gt; tab_x0009_end a_x005F_x000D_b '
            'smile _xD83D__xDE00_ _x000D__x000A_</S></Objs>')
    assert parse_clixml(text) == ['VM \u00dcberweisung "prod" 01 & <x> tab\tend a_x000D_b smile \U0001F600 ']


def test_format_and_parse_round_trip_awkward_text():
    message = 'Name "a_x000D_b" & <c>\ttab \u00fcber \U0001F600'
    lines = parse_clixml(err(message, "InvalidArgument", "X", command="Get-VM"))
    assert lines[0] == "Get-VM : " + message


def test_several_clixml_documents_and_plain_noise_are_all_read():
    first = err("first failure", "InvalidOperation", "A")
    second = err("second failure", "InvalidOperation", "B")
    text = "icacls: D:\\x: Access is denied.\r\n" + format_clixml_progress() + first + "\r\n" + second
    lines = parse_clixml(text)
    assert lines[0] == "first failure"
    assert "second failure" in lines
    assert lines[-1] == "icacls: D:\\x: Access is denied."


def test_bytes_and_broken_xml_still_give_the_error_lines():
    broken = (f'#< CLIXML\r\n<Objs Version="1.1.0.1" {NS}><S S="Error">it broke &amp; died_x000D__x000A_</S>'
              '<S S="Error">second line_x000D__x000A_</S><Obj S="progress"></Objs>')
    assert parse_clixml(broken.encode("utf-8")) == ["it broke & died", "second line"]


def test_a_document_cut_short_still_gives_its_error_lines():
    text = err("first line", "InvalidOperation", "X")
    cut = text[:text.index("At line:")]
    assert parse_clixml(cut) == ["first line"]
    assert str(error_from_stderr(cut, "save_vm")) == "first line"


def test_an_error_record_object_uses_its_tostring():
    text = (f'#< CLIXML\r\n<Objs Version="1.1.0.1" {NS}><Obj S="Error" RefId="0"><ToString>'
            "Save-VM : boom_x000A_more</ToString></Obj></Objs>")
    assert parse_clixml(text) == ["Save-VM : boom", "more"]


# -- the shape format_clixml_error writes ------------------------------------------------

def test_format_writes_the_powershell_51_shape():
    text = err('Hyper-V was unable to find a virtual machine with name "web01".', "InvalidArgument",
               "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM", target="web01",
               command="Get-VM", snippet="Get-VM -Name web01")
    assert text.startswith("#< CLIXML\r\n" f'<Objs Version="1.1.0.1" {NS}><S S="Error">Get-VM : Hyper-V was')
    assert text.endswith('<S S="Error"> _x000D__x000A_</S></Objs>')
    assert "\n" not in text[len("#< CLIXML\r\n"):]
    assert parse_clixml(text) == [
        'Get-VM : Hyper-V was unable to find a virtual machine with name "web01".',
        "At line:1 char:1",
        "+ Get-VM -Name web01",
        "+ ~~~~~~~~~~~~~~~~~~",
        "    + CategoryInfo          : InvalidArgument: (web01:String) [Get-VM], VirtualizationException",
        "    + FullyQualifiedErrorId : InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM",
        " ",
    ]


def test_long_message_wraps_like_the_console_host():
    message = ("The term 'fake' is not recognized as the name of a cmdlet, function, script file, or "
               "operable program. Check the spelling of the name, or if a path was included, verify that "
               "the path is correct and try again.")
    mine = parse_clixml(err(message, "ObjectNotFound", "CommandNotFoundException", command="fake"))
    real = parse_clixml(REAL_COMMAND_NOT_FOUND)
    assert mine[:2] == real[:2]


def test_long_category_and_id_lines_are_cut_as_powershell_51_cuts_them():
    # An 80-column host, as seen in the wild: the error view cuts the line into pieces, the
    # host wraps the glued result, leaving a 3-space indent on the continuation.
    lines = format_error_lines("Cannot create a file when that file already exists.", "WriteError",
                               "MoveFileInfoItemIOError,Microsoft.PowerShell.Commands.MoveItemCommand",
                               "C:\\Users\\SI555945\\selfservice.portal-0.5.0.zip", command="Move-Item",
                               exception="IOException", target_type="FileInfo", width=80)
    assert lines[-5:-1] == [
        "    + CategoryInfo          : WriteError: (C:\\Users\\SI5559...ortal-0.5.0.zip:F ",
        "   ileInfo) [Move-Item], IOException",
        "    + FullyQualifiedErrorId : MoveFileInfoItemIOError,Microsoft.PowerShell.Com ",
        "   mands.MoveItemCommand",
    ]
    e = error_from_stderr(err("Cannot create a file when that file already exists.", "WriteError",
                              "MoveFileInfoItemIOError,Microsoft.PowerShell.Commands.MoveItemCommand",
                              command="Move-Item", width=80), "delete_files")
    assert e.category == "WriteError"
    assert e.fqid == "MoveFileInfoItemIOError,Microsoft.PowerShell.Commands.MoveItemCommand"
    assert type(e) is HyperVError  # "already exists" in the message decides nothing


def test_progress_can_precede_the_error_in_one_document():
    text = err("boom", "InvalidOperation", "X", progress=2)
    assert text.count('S="progress"') == 2 and text.count("#< CLIXML") == 1
    assert parse_clixml(text)[0] == "boom"


# -- error_from_stderr: the table in docs/hyperv-operations.md -----------------------------------------

CASES = [
    # (message, category, fqid, expected)
    # Get-VM's own "not found" is an InvalidArgument like any bad argument: not a "no such
    # VM" answer (the scripts find VMs by filtering Get-VM's list and say so themselves).
    ('Hyper-V was unable to find a virtual machine with name "web01".', "InvalidArgument",
     "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM", HyperVError),
    ("No virtual machine with ID 0f8f on this host.", "ObjectNotFound", "VMNotFound,Get-QmVM", VMNotFound),
    ('No virtual machine is named "web01" on this host.', "ObjectNotFound", "VMNotFound", VMNotFound),
    # ObjectNotFound from anything else (a disk, a cmdlet that is not installed) is no answer about a VM
    ("Getting the mounted storage instance for the path failed.", "ObjectNotFound",
     "ObjectNotFound,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD", HyperVError),
    ("You do not have the required permission to complete this task.", "PermissionDenied",
     "AccessDenied,Microsoft.HyperV.PowerShell.Commands.GetVM", AccessDenied),
    ("Access is denied. The path is outside this host's storage.", "NotSpecified",
     "UnauthorizedAccess,Microsoft.HyperV.PowerShell.Commands.RemoveVM", AccessDenied),
    # the words "access denied" or "already exists" in a message decide nothing
    ("'web01' failed to start.\nGeneral access denied error (0x80070005). Access is denied.", "NotSpecified",
     "OperationFailed,Microsoft.HyperV.PowerShell.Commands.StartVM", HyperVError),
    ("The operation failed because a virtual machine with the same identifier already exists.",
     "InvalidOperation", "OperationFailed,Microsoft.HyperV.PowerShell.Commands.ImportVM", HyperVError),
    ("Cannot register this VM.", "ResourceExists", "ObjectExists,Microsoft.HyperV.PowerShell.Commands.ImportVM",
     AlreadyExists),
    ("The operation cannot be performed while the object is in its current state.", "InvalidOperation",
     "InvalidState,Microsoft.HyperV.PowerShell.Commands.SaveVM", InvalidVMState),
    ("VM 0f8f is Running; remove_vm turns a VM off only when asked (turn_off).", "InvalidOperation",
     "InvalidState", InvalidVMState),
    ("Checkpoint operation failed.", "InvalidOperation", "OperationFailed,Microsoft.HyperV.PowerShell.Commands."
     "CheckpointVM", HyperVError),
    ("State looks odd.", "InvalidArgument", "InvalidState,Microsoft.HyperV.PowerShell.Commands.SaveVM",
     HyperVError),
    ('More than one virtual machine is named "web" (ids a, b); ask by vm_id.', "InvalidResult",
     "AmbiguousVMName,Get-QmVM", HyperVError),
]


@pytest.mark.parametrize("message,category,fqid,expected", CASES,
                         ids=[f"{c[3].__name__}-{i}" for i, c in enumerate(CASES)])
def test_errors_map_to_the_exception_the_contract_names(message, category, fqid, expected):
    e = error_from_stderr(err(message, category, fqid, command="Save-VM", progress=1), "save_vm", host="hv1")
    assert type(e) is expected
    assert e.category == category
    assert e.fqid == fqid
    assert e.op == "save_vm" and e.host == "hv1"
    assert str(e) == "Save-VM : " + message
    assert e.retryable is False


def test_message_comes_first_and_wrapped_lines_are_joined_again():
    e = error_from_stderr(REAL_COMMAND_NOT_FOUND, "describe_vm")
    assert str(e) == ("fake : The term 'fake' is not recognized as the name of a cmdlet, function, script "
                      "file, or operable program. Check the spelling of the name, or if a path was included, "
                      "verify that the path is correct and try again.")
    assert e.category == "ObjectNotFound" and e.fqid == "CommandNotFoundException"
    assert type(e) is HyperVError  # a cmdlet that is not there says nothing about a VM
    assert any("CategoryInfo" in ln for ln in e.lines)


def test_a_long_vm_name_in_the_message_still_maps_after_wrapping():
    name = "a-very-long-virtual-machine-name-" * 4
    text = err(f'No virtual machine is named "{name}" on this host.', "ObjectNotFound", "VMNotFound",
               target=name)
    assert len(parse_clixml(text)) > 7  # the message was wrapped
    e = error_from_stderr(text, "describe_vm")
    assert type(e) is VMNotFound
    assert name in str(e)


GERMAN = 'Hyper-V konnte keinen virtuellen Computer mit der ID "0f8f" finden. Zugriff verweigert; existiert bereits.'


JAPANESE = "\u4eee\u60f3\u30de\u30b7\u30f3\u304c\u898b\u3064\u304b\u308a\u307e\u305b\u3093"


@pytest.mark.parametrize("message", [GERMAN, JAPANESE,
                                     'Hyper-V was unable to find a virtual machine with ID "0f8f". Access is denied; '
                                     "it already exists."])
@pytest.mark.parametrize("category,fqid,expected", [(c[1], c[2], c[3]) for c in CASES])
def test_the_class_comes_from_category_and_id_alone_in_any_language(message, category, fqid, expected):
    e = error_from_stderr(err(message, category, fqid, command="Get-VM"), "describe_vm")
    assert type(e) is expected
    assert str(e) == "Get-VM : " + message


@pytest.mark.parametrize("position", ["At line:1 char:1", "In Zeile:1 Zeichen:1",
                                      "\u767a\u751f\u5834\u6240 \u884c:1 \u6587\u5b57:1",
                                      "At C:\\Scripts\\qm.ps1:12 char:5"])
def test_the_message_ends_where_the_position_line_begins_in_any_language(position):
    text = (f'#< CLIXML\r\n<Objs Version="1.1.0.1" {NS}><S S="Error">Speichern fehlgeschlagen_x000D__x000A_</S>'
            f'<S S="Error">{position}_x000D__x000A_</S><S S="Error">+ Save-VM -VM $vm_x000D__x000A_</S>'
            '<S S="Error">+ ~~~~~~~~~~~~~~~~_x000D__x000A_</S>'
            '<S S="Error">    + CategoryInfo          : InvalidOperation: (:) [Save-VM], VirtualizationException'
            '_x000D__x000A_</S><S S="Error">    + FullyQualifiedErrorId : InvalidState,Microsoft.HyperV.PowerShell.'
            'Commands.SaveVM_x000D__x000A_</S></Objs>')
    e = error_from_stderr(text, "save_vm")
    assert str(e) == "Speichern fehlgeschlagen"
    assert type(e) is InvalidVMState


def test_a_very_long_error_id_is_glued_back_together():
    fqid = "InvalidState," + "Microsoft.HyperV.PowerShell.Commands.SaveVM" * 4
    e = error_from_stderr(err("nope", "InvalidOperation", fqid, command="Save-VM"), "save_vm")
    assert e.fqid == fqid
    assert type(e) is InvalidVMState


def test_two_line_hyper_v_messages_keep_their_lines():
    e = error_from_stderr(err("'web01' failed to change state.\nThe operation cannot be performed while the "
                              "object is in its current state.", "InvalidOperation",
                              "InvalidState,Microsoft.HyperV.PowerShell.Commands.SaveVM", command="Save-VM"),
                          "save_vm")
    assert str(e).split("\n") == ["Save-VM : 'web01' failed to change state.",
                                  "The operation cannot be performed while the object is in its current state."]
    assert type(e) is InvalidVMState


def test_plain_text_stderr_and_empty_stderr_still_give_an_error():
    e = error_from_stderr("'powershell.exe' is not recognized as an internal or external command,\r\n"
                          "operable program or batch file.\r\n", "list_vms")
    assert type(e) is HyperVError
    assert str(e).startswith("'powershell.exe' is not recognized")
    e = error_from_stderr(format_clixml_progress(), "list_vms", exit_code=3)
    assert type(e) is HyperVError
    assert "exit code 3" in str(e)


def test_pwsh_style_unindented_info_lines_are_read_too():
    text = (f'#< CLIXML\r\n<Objs Version="1.1.0.1" {NS}><S S="Error">boom_x000D__x000A_</S>'
            '<S S="Error">At line:1 char:1_x000D__x000A_</S><S S="Error">+ throw \'boom\'_x000D__x000A_</S>'
            '<S S="Error">+ ~~~~~~~~~~~~_x000D__x000A_</S>'
            '<S S="Error">+ CategoryInfo          : OperationStopped: (boom:String) [], RuntimeException'
            '_x000D__x000A_</S><S S="Error">+ FullyQualifiedErrorId : boom_x000D__x000A_</S></Objs>')
    e = error_from_stderr(text, "x")
    assert (str(e), e.category, e.fqid, type(e)) == ("boom", "OperationStopped", "boom", HyperVError)


# -- the hierarchy ---------------------------------------------------------------------------

def test_only_transport_failures_are_retryable():
    assert TransportError("x").retryable and OperationTimeout("x").retryable
    assert issubclass(OperationTimeout, TransportError)
    for cls in (HyperVError, VMNotFound, AccessDenied, AlreadyExists, InvalidVMState):
        assert cls("x").retryable is False
        assert issubclass(cls, HyperVError)
    assert issubclass(TransportError, HyperVError)


def test_exceptions_survive_pickling():
    e = pickle.loads(pickle.dumps(VMNotFound("gone", op="describe_vm", host="hv1")))
    assert type(e) is VMNotFound and str(e) == "gone"


def test_script_mismatch_is_reexported():
    from workers.hyperv.scripts import ScriptMismatch
    assert errors.ScriptMismatch is ScriptMismatch
