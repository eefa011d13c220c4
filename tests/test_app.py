"""app.py, the command: its flags and its checks before the server starts, a real start and stop, and the
line it prints when the page is open to the network. (The page itself: tests/test_demo.py.)"""

import socket
import urllib.request

import pytest
from conftest import assert_user_error

import app


def test_the_page_warns_when_it_is_open_to_the_network():
    assert app.exposure_warning("127.0.0.1", 7860) is None and app.exposure_warning("localhost", 7860) is None
    warning = app.exposure_warning("0.0.0.0", 7860)
    assert warning.startswith("warning: --host 0.0.0.0: the page is reachable from the network")
    assert all(f"http://{a}:7860/" in warning for a in app.network_addresses("0.0.0.0"))
    assert app.network_addresses("192.0.2.7") == ["192.0.2.7"]


def test_missing_or_broken_weights_are_one_line(cli, tmp_path):
    assert_user_error(cli("app", "--weights", tmp_path / "missing.pt"), "no such checkpoint")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    assert_user_error(cli("app", "--weights", tmp_path / "broken.pt"), "damaged")


def test_a_port_in_use_is_one_line(cli, weights):
    with socket.socket() as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        done = cli("app", "--weights", weights, "--port", port)
    assert_user_error(done, f"port {port} on 127.0.0.1 is in use; pass --port N or stop the other server")


@pytest.mark.parametrize(
    "flag", [["--port", "65536"], ["--port", "-1"], ["--port", "http"], ["--host", "192.0.2.1"]]
)  # 192.0.2.1: a documentation address, never this machine's, and no DNS look-up
def test_bad_host_or_port_is_one_line(cli, weights, flag):
    assert_user_error(cli("app", "--weights", weights, *flag), flag[0])


def test_an_upload_folder_that_cannot_be_written_is_one_line(cli, weights, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "file" / "gradio"))
    done = cli("app", "--weights", weights, "--port", "0")
    assert_user_error(done, "GRADIO_TEMP_DIR (where the page keeps uploads)")


def test_main_serves_on_loopback_without_a_share_link_until_ctrl_c(cli, weights, monkeypatch):
    seen = {}

    def visit_then_ctrl_c(demo):
        with urllib.request.urlopen(demo.local_url, timeout=30) as response:
            seen.update(url=demo.local_url, share=demo.share_url, status=response.status, html=response.read().decode())
        raise KeyboardInterrupt

    monkeypatch.setattr(app, "wait_until_stopped", visit_then_ctrl_c)
    done = cli("app", "--weights", weights, "--port", "0")
    assert done.returncode == 130, done.stderr
    assert f"LeNet-5 digit demo on {seen['url']}" in done.stdout
    assert seen["url"].startswith("http://127.0.0.1:") and seen["share"] is None
    assert seen["status"] == 200 and "LeNet-5: draw a digit" in seen["html"]
    port = int(seen["url"].rstrip("/").rsplit(":", 1)[1])
    assert app.claim_port("127.0.0.1", port) == port  # stopped: the port is free again
