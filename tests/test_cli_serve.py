"""``mel serve`` (modeling_mel.cli_serve) without a server: its options reach the server and its limits as given, and a
bad option is one line and exit code 2 before any model loads. The server itself: tests/test_serving.py and
tests/test_serve_limits.py."""

from __future__ import annotations

import pytest

from inference_fixtures import write_kb
from modeling_mel import cli_serve, serving
from modeling_mel.cli import main


@pytest.fixture()
def kb(tmp_path) -> str:
    return write_kb(str(tmp_path))


@pytest.fixture()
def calls(monkeypatch) -> dict:
    """Records what ``mel serve`` would load and serve (nothing is loaded, no port is opened)."""
    seen: dict = {}

    def build_pipeline(args):
        seen["args"] = args
        return "PIPELINE"

    def run_server(pipe, host, port, max_batch_size, max_wait_ms, batching, limits, graceful_timeout, log_level,
                   info_paths=False):
        seen["server"] = dict(pipe=pipe, host=host, port=port, max_batch_size=max_batch_size,
                              max_wait_ms=max_wait_ms, batching=batching, limits=limits,
                              graceful_timeout=graceful_timeout, info_paths=info_paths)

    monkeypatch.setattr(cli_serve, "build_pipeline", build_pipeline)
    monkeypatch.setattr(serving, "run_server", run_server)
    return seen


def test_help_lists_the_server_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--max_batch_size", "--max_wait_ms", "--no_batching", "--model", "--index"):
        assert option in out, option


def test_defaults_and_options_reach_the_server(kb, calls):
    assert main(["serve", "--model", "M", "--kb", kb]) == 0
    server = calls["server"]
    assert (server["pipe"], server["host"], server["port"]) == ("PIPELINE", "127.0.0.1", 8000)  # this machine only
    assert (server["max_batch_size"], server["max_wait_ms"], server["batching"], server["info_paths"]) == (32, 10.0,
                                                                                                           True, False)
    limits = server["limits"]
    assert (limits.max_body_bytes, limits.max_list, limits.max_top_k) == (1 << 20, 64, 100)
    assert main(["serve", "--model", "M", "--kb", kb, "--port", "0", "--no_batching", "--max_list", "3",
                 "--max_body_bytes", "1000", "--read_timeout", "0", "--info_paths"]) == 0
    server = calls["server"]
    assert server["port"] == 0 and server["batching"] is False and server["info_paths"] is True
    assert (server["limits"].max_list, server["limits"].max_body_bytes, server["limits"].read_timeout) == (3, 1000, 0)
    assert calls["args"].model == "M" and calls["args"].kb == kb


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--port", "70000"], "--port must be in 0..65535, got 70000"),
        (["--max_batch_size", "0"], "--max_batch_size must be >= 1, got 0"),
        (["--max_top_k", "0"], "--max_top_k must be >= 1, got 0"),
        (["--header_timeout", "-1"], "--header_timeout must be >= 0, got -1.0"),
        (["--device", "tpu"], "--device tpu: unknown device"),
    ],
)
def test_bad_options_exit_2_with_one_line_before_loading(kb, calls, capsys, extra, message):
    assert main(["serve", "--model", "M", "--kb", kb, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mel serve: {message}") and "\n" not in err
    assert calls == {}  # no pipeline was built, no server started
