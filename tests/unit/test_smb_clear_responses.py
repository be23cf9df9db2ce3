"""workers.smb.wire's rule for responses that arrive unencrypted (MS-SMB2 3.2.5.1.3), on the
header alone: the relay test (tests/integration/test_smb_wire.py) shows it on the wire for
signed sessions; an encrypted session's plaintext response cannot be made by a relay that
has no keys, so its refusal is shown here."""
from types import SimpleNamespace

import pytest
from smbprotocol.connection import Commands
from smbprotocol.exceptions import SMBException
from smbprotocol.header import NtStatus, Smb2Flags, SMB2HeaderResponse

from workers.smb import wire


def connection(**session) -> wire.Connection:
    conn = wire.Connection.__new__(wire.Connection)  # no socket: only the rule is exercised
    conn.session_table = {7: SimpleNamespace(**session)}
    return conn


def header(command: int, status: int = NtStatus.STATUS_SUCCESS, message_id: int = 5, signed: bool = False):
    h = SMB2HeaderResponse()
    h["command"] = command
    h["status"] = status
    h["message_id"] = message_id
    h["session_id"] = 7
    if signed:
        h["flags"].set_flag(Smb2Flags.SMB2_FLAGS_SIGNED)
    return h


def test_nothing_may_come_in_the_clear_on_an_encrypted_session():
    conn = connection(encrypt_data=True, signing_required=False, signing_key=b"k" * 16)
    for command in (Commands.SMB2_CREATE, Commands.SMB2_QUERY_INFO, Commands.SMB2_CLOSE, Commands.SMB2_ECHO):
        with pytest.raises(SMBException, match="unencrypted response"):
            conn._check_clear(header(command), 7, command)


def test_an_unsigned_response_on_a_session_that_requires_signing_is_refused_but_not_an_interim_one():
    conn = connection(encrypt_data=False, signing_required=True, signing_key=b"k" * 16)
    with pytest.raises(SMBException, match="unsigned response"):
        conn._check_clear(header(Commands.SMB2_CREATE, NtStatus.STATUS_OBJECT_NAME_NOT_FOUND),
                          7, Commands.SMB2_CREATE)
    conn._check_clear(header(Commands.SMB2_CREATE, NtStatus.STATUS_PENDING), 7, Commands.SMB2_CREATE)
    conn._check_clear(header(Commands.SMB2_OPLOCK_BREAK, message_id=0xFFFFFFFFFFFFFFFF), 7,
                      Commands.SMB2_OPLOCK_BREAK)


def test_without_signing_required_an_unsigned_response_is_smbprotocols_business():
    conn = connection(encrypt_data=False, signing_required=False, signing_key=None)
    conn._check_clear(header(Commands.SMB2_CREATE), 7, Commands.SMB2_CREATE)
