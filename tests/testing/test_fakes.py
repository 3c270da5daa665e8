"""What every fake shares: the reply script, request recording, lifecycle and the command line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from ferryman.testing import FakeAnthropic, FakeGemini, FakeOpenAI, Reply, Script, ToolCallSpec
from tests.processes import free_port

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping me"}]


def ask(client: openai.OpenAI) -> str:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    return completion.choices[0].message.content or ""


# -- the script ------------------------------------------------------------------------------------


def test_queued_replies_are_consumed_in_order_then_the_echo_returns(openai_fake, openai_client):
    openai_fake.script.reply(Reply.text("first"), Reply.text("second"))

    assert [ask(openai_client) for _ in range(3)] == ["first", "second", "echo: ping me"]
    assert openai_fake.script.pending == 0


def test_times_repeats_a_sequence(openai_fake, openai_client):
    openai_fake.script.reply(Reply.error(503), Reply.text("ok"), times=2)

    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(ask(openai_client))
        except openai.InternalServerError:
            outcomes.append("503")

    assert outcomes == ["503", "ok", "503", "ok"]


def test_set_default_replaces_the_echo_until_cleared(openai_fake, openai_client):
    openai_fake.script.set_default(Reply.text("always this"))
    openai_fake.script.reply(Reply.text("queued first"))

    assert [ask(openai_client) for _ in range(3)] == ["queued first", "always this", "always this"]
    openai_fake.script.set_default(None)
    assert ask(openai_client) == "echo: ping me"


def test_clear_forgets_queued_replies_and_the_default():
    script = Script()
    script.set_default(Reply.text("x"))
    script.reply(Reply.text("a"), Reply.text("b"))

    script.clear()

    assert script.pending == 0
    assert script.take() == Reply()


def test_refused_requests_do_not_consume_the_script():
    with FakeOpenAI(api_key="right") as fake:
        fake.script.reply(Reply.text("for the right key"))
        with openai.OpenAI(base_url=fake.base_url, api_key="wrong", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                ask(wrong)
        with openai.OpenAI(base_url=fake.base_url, api_key="right", max_retries=0) as right:
            assert ask(right) == "for the right key"


def test_tool_calls_reply_needs_a_call():
    with pytest.raises(ValueError, match="at least one"):
        Reply.tool_calls()


def test_echo_reply_keeps_its_timing():
    reply = Reply.echo(chunks=5, delay=0.1, chunk_delay=0.2)

    assert (reply.reply_text, reply.calls, reply.chunks, reply.delay, reply.chunk_delay) == (
        None,
        (),
        5,
        0.1,
        0.2,
    )


def test_tool_call_ids_given_by_the_script_are_kept(openai_fake, openai_client):
    openai_fake.script.reply(Reply.tool_calls(ToolCallSpec("f", {"a": 1}, id="call_fixed")))

    completion = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert [call.id for call in completion.choices[0].message.tool_calls or []] == ["call_fixed"]


# -- recording -------------------------------------------------------------------------------------


def test_requests_is_a_snapshot_in_arrival_order(openai_fake, openai_client):
    ask(openai_client)
    snapshot = openai_fake.requests
    openai_client.models.list()

    assert [request.path for request in snapshot] == ["/v1/chat/completions"]
    assert [request.method for request in openai_fake.requests] == ["POST", "GET"]


def test_last_request_without_requests_is_a_lookup_error(openai_fake):
    with pytest.raises(LookupError):
        _ = openai_fake.last_request


def test_clear_requests_and_reset(openai_fake, openai_client):
    ask(openai_client)
    openai_fake.clear_requests()
    assert openai_fake.requests == []

    ask(openai_client)
    openai_fake.script.reply(Reply.text("pending"))
    openai_fake.reset()
    assert openai_fake.requests == []
    assert openai_fake.script.pending == 0


def test_headers_are_case_insensitive_and_body_is_parsed(openai_fake, openai_client):
    ask(openai_client)

    request = openai_fake.last_request
    assert request.headers["AUTHORIZATION"] == request.headers["authorization"] == "Bearer sk-test"
    assert request.body["messages"] == MESSAGES
    assert b'"ping me"' in request.raw_body


async def test_non_json_body_is_recorded_raw_and_refused_in_provider_shape(anthropic_fake, http):
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01", "Content-Type": "application/json"}
    async with http.post(
        f"{anthropic_fake.base_url}/v1/messages", data=b"{not json", headers=headers
    ) as response:
        assert response.status == 400
        assert (await response.json())["type"] == "error"

    assert anthropic_fake.last_request.body is None
    assert anthropic_fake.last_request.raw_body == b"{not json"


# -- lifecycle -------------------------------------------------------------------------------------


def test_port_and_url_need_a_running_fake():
    fake = FakeGemini()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url
    with fake:
        assert fake.url == f"http://127.0.0.1:{fake.port}"
        assert fake.base_url == fake.url
    with pytest.raises(RuntimeError):
        _ = fake.port


def test_starting_twice_is_an_error_and_stopping_twice_is_harmless():
    fake = FakeAnthropic().start()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            fake.start()
    finally:
        fake.stop()
    fake.stop()


def test_a_stopped_fake_can_start_again_and_keeps_its_records():
    fake = FakeOpenAI()
    with fake, openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as client:
        ask(client)
    with fake, openai.OpenAI(base_url=fake.base_url, api_key="k", max_retries=0) as client:
        assert ask(client) == "echo: ping me"
    assert len(fake.requests) == 2


def test_a_requested_port_is_used_and_a_busy_one_is_reported():
    port = free_port()
    with FakeOpenAI(port=port) as first:
        assert first.port == port
        with pytest.raises(RuntimeError, match="could not start"):
            FakeOpenAI(port=port).start()


def test_stopping_cuts_a_slow_stream_quickly(openai_fake, openai_client):
    openai_fake.script.reply(Reply.text("a b c d e f", chunks=6, chunk_delay=5.0))
    stream = openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    next(iter(stream))

    started = time.monotonic()
    openai_fake.stop()
    stopped_in = time.monotonic() - started

    with pytest.raises(openai.APIConnectionError):
        list(stream)
    assert stopped_in < 2.0


async def test_async_context_manager_serves_every_provider():
    async with FakeOpenAI() as one, FakeAnthropic() as two, FakeGemini() as three:
        ports = {one.port, two.port, three.port}

    assert len(ports) == 3


# -- command line ----------------------------------------------------------------------------------


def test_cli_serves_until_sigterm():
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    process = subprocess.Popen(
        [sys.executable, "-m", "ferryman.testing", "openai", "--port", str(port), "--api-key", "sk-cli"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == f"fake openai serving on http://127.0.0.1:{port}/v1"
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli", max_retries=0) as client:
            assert ask(client) == "echo: ping me"
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError):
                ask(client)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
    assert code == 0


def test_cli_rejects_an_unknown_provider():
    result = subprocess.run(
        [sys.executable, "-m", "ferryman.testing", "mistral"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 2
    assert "invalid choice" in result.stderr
