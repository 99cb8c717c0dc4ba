"""Server-side request limits of the web UI and the `openhart serve` command's bad inputs."""

import logging

import pytest

from openhart.cli import main
from openhart.config import SamplingConfig
from openhart.commands.serve import is_loopback
from openhart.web.limits import MAX_SEED, RequestError, ServeLimits, validate_request

GOOD = dict(prompt="  red apple ", negative_prompt="", seed=7, guidance_scale=4.5, top_k=None, top_p=0.0,
            smooth=True, head_steps=8, use_residual=True, num_images=2, head_temperature=1.0,
            last_scale="consistent")


def check(**changes):
    return validate_request(ServeLimits(max_prompt_chars=20, max_images=4), SamplingConfig(), 512,
                            **dict(GOOD, **changes))


def test_a_good_request_is_normalised():
    request = check(seed=7.0, num_images=2.0)
    assert request.prompt == "red apple" and request.negative_prompt is None
    assert request.seed == 7 and isinstance(request.seed, int) and request.num_images == 2
    # top-k means what it means everywhere: None the per-scale schedule, 0 off, k every scale
    assert request.sampling.top_k is None and check(top_k=0).sampling.top_k == 0
    assert check(top_k=100).sampling.top_k == 100 and check(top_k=100.0).sampling.top_k == 100
    assert check(seed=MAX_SEED).seed == MAX_SEED
    assert check(head_temperature=0).sampling.head_temperature == 0.0
    assert check().sampling.last_scale == "consistent" and check().sampling.guidance_scale == 4.5


@pytest.mark.parametrize("changes, message", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt="   "), "prompt is empty"),
    (dict(prompt=None), "prompt is empty"),
    (dict(prompt=123), "prompt must be text"),
    (dict(prompt="x" * 21), "prompt is too long: 21 characters, at most 20"),
    (dict(negative_prompt="y" * 25), "negative prompt is too long"),
    (dict(num_images=5), "number of images must be between 1 and 4"),
    (dict(num_images=0), "number of images must be between 1 and 4"),
    (dict(num_images=1.5), "number of images must be a whole number"),
    (dict(seed=-1), "seed must be between 0"),
    (dict(seed=MAX_SEED + 1), "seed must be between 0"),
    (dict(seed=float("nan")), "seed must be a number"),
    (dict(seed="7"), "seed must be a number"),
    (dict(guidance_scale=20.5), "guidance scale must be between 0 and 20"),
    (dict(guidance_scale=float("inf")), "guidance scale must be a number"),
    (dict(top_k=-1), "top-k must be between 0 and 512"),
    (dict(top_k=2.5), "top-k must be a whole number"),
    (dict(top_k=513), "top-k must be between 0 and 512"),
    (dict(top_p=1.0), "top-p must be between 0 and 0.99"),
    (dict(head_steps=0), "diffusion steps must be between 1 and 50"),
    (dict(head_steps=51), "diffusion steps must be between 1 and 50"),
    (dict(smooth="yes"), "must be true or false"),
    (dict(num_images=True), "number of images must be a number"),
    (dict(head_temperature=-0.1), "residual temperature must be between 0 and 2"),
    (dict(head_temperature=float("nan")), "residual temperature must be a number"),
    (dict(last_scale="mine"), r"last_scale must be one of \['official', 'consistent', 'gumbel'\]"),
    (dict(use_residual=None), "use_residual must be true or false"),
])
def test_requests_outside_the_limits_are_refused(changes, message):
    with pytest.raises(RequestError, match=message):
        check(**changes)


def test_limits_themselves_are_checked():
    with pytest.raises(ValueError, match="max-images must be >= 1"):
        ServeLimits(max_images=0)


@pytest.mark.parametrize("host, local", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                         ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.4", False),
                                         ("example.org", False)])
def test_loopback_hosts(host, local):
    assert is_loopback(host) is local


def test_serve_refuses_a_port_in_use_before_loading_the_model(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port), "--model", "/nonexistent/model"]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_serve_warns_before_binding_beyond_this_machine(caplog, capsys, tmp_path):
    with caplog.at_level(logging.WARNING, logger="openhart"):
        code = main(["serve", "--host", "0.0.0.0", "--model", str(tmp_path / "missing")])
    assert code == 2
    assert "anyone who can reach this machine" in caplog.text
    assert "missing" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["serve", "--port", "0"], "argument --port: must be between 1 and 65535"),
    (["serve", "--max-images", "0"], "argument --max-images: must be between 1 and 1024"),
    (["serve", "--model", "/nonexistent/model"], "model folder not found: /nonexistent/model"),
    (["serve", "--host", "no-such-host.invalid"], "is not an address of this machine"),
])
def test_serve_bad_input_exits_2_with_a_message(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_:  # usage errors, at parse time
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
