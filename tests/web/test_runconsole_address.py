"""`make run` refuses an address that is taken instead of looking started."""

from __future__ import annotations

import socket

import pytest
from django.core.management import CommandError, call_command


def test_it_refuses_a_taken_address_before_doing_anything():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CommandError, match=f"127.0.0.1:{port}"):
            call_command("runconsole", f"127.0.0.1:{port}")


def test_it_refuses_an_address_that_is_not_host_and_port():
    with pytest.raises(CommandError, match="HOST:PORT"):
        call_command("runconsole", "127.0.0.1:http")
