"""Fake OpenAI, Anthropic and Gemini servers that speak the real wire formats, for tests and demos.

The real provider APIs cost money, need keys and fail when they please; these fakes answer on
loopback with the exact JSON, headers, status codes and stream framing of each provider, so a gateway
(or any integration) can be tested end to end with the official SDKs as clients. They are written from
the providers' public API references, independently of Ferryman's own codecs, so they check them.

Quick start::

    from ferryman.testing import FakeOpenAI, Reply, ToolCallSpec, Usage

    with FakeOpenAI() as fake:                       # or: async with FakeOpenAI() as fake
        client = openai.OpenAI(base_url=fake.base_url, api_key="anything")
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        # -> "echo: hi", usage prompt_tokens=1, completion_tokens=2
        fake.script.reply(Reply.text("Paris is sunny.", chunks=3))
        fake.script.reply(Reply.tool_calls(ToolCallSpec("get_weather", {"city": "Paris"})))
        fake.script.reply(Reply.error(429, headers={"retry-after": "2"}))
        assert fake.last_request.body["model"] == "gpt-4o-mini"

Each fake runs an aiohttp server on `127.0.0.1` and a free port (or `port=`), driven by its own event
loop in a background thread, so sync and async tests use it alike. What to point a client at:

================  =================================  =====================================================
fake              `base_url` (SDK and Ferryman's      paths served
                  `api_base`)
================  =================================  =====================================================
`FakeOpenAI`      `http://127.0.0.1:PORT/v1`         `POST /v1/chat/completions`, `POST /v1/embeddings`,
                                                     `GET /v1/models`; Azure: `POST /openai/deployments/
                                                     {d}/chat/completions|embeddings?api-version=...`
                                                     (give `fake.url` as `azure_endpoint`)
`FakeAnthropic`   `http://127.0.0.1:PORT`            `POST /v1/messages`, `POST /v1/messages/count_tokens`,
                                                     `GET /v1/models`
`FakeGemini`      `http://127.0.0.1:PORT`            `POST /{v1beta,v1}/models/{m}:generateContent`,
                                                     `:streamGenerateContent` (`?alt=sse`: SSE with CRLF;
                                                     without: a streamed JSON array), `:embedContent`,
                                                     `:batchEmbedContents`, `:countTokens`,
                                                     `GET /{v1beta,v1}/models`
================  =================================  =====================================================

Credentials are checked as each provider checks them (OpenAI: `Authorization: Bearer`; Azure: `api-key`;
Anthropic: `x-api-key` or Bearer, plus `anthropic-version`; Gemini: `x-goog-api-key` or `?key=`). Any
key passes unless the fake was built with `api_key="..."`; a missing or wrong one gets the provider's
own status and error body. Requests the provider would refuse (no `max_tokens` for Anthropic, a
`system` role in Anthropic messages, `stream_options` without `stream`, a tool result answering no
tool call, an unknown Gemini role) are refused the same way.

**The script.** `fake.script` is a queue of `Reply` objects, one taken per model call (chat,
messages, generate, embeddings; never for model lists, token counts or refused requests); when it is
empty the default answers, which echoes: `"echo: <text of the last user message>"`. Usage is
deterministic: input tokens are the words of every text in the prompt (system included), output
tokens the words of the reply (for a tool call, of its name and JSON arguments); `Usage(...)` on a
reply overrides both, with `cached_tokens`, `cache_write_tokens` and `reasoning_tokens` mapped to
each provider's fields. `script.reply(a, b, times=2)` queues `a b a b`; `script.set_default(r)`
replaces the echo; `script.clear()`, `script.pending`.

==========================================================  ============================================
`Reply.text(text, chunks=1, finish=, usage=)`               a text answer; streamed as `chunks` deltas
`Reply.tool_calls(*ToolCallSpec, text=, chunks=3)`          parallel calls; OpenAI and Anthropic stream
                                                            arguments in `chunks` fragments, Gemini
                                                            sends each call whole
`Reply.echo(chunks=, delay=, chunk_delay=)`                 the default, with timing
`Reply.error(status, message, error_type=, code=,           the provider's error body and status; with
headers=, body=, after_chunks=)`                            `after_chunks`, a stream's in-stream error
                                                            event after that many events
`Reply.drop(after_chunks=None)`                             close the connection before responding, or
                                                            after K stream events (always before the end;
                                                            a plain request gets half its body)
`Reply.malformed(after_chunks=0)`                           a broken JSON event after K good ones (or a
                                                            truncated JSON body)
`Reply.not_json(body, content_type=, status=200)`           an HTML page where JSON was expected
==========================================================  ============================================

`finish` takes `"stop"`, `"length"`, `"tool_calls"` or `"content_filter"`, mapped to each provider's
word (`end_turn`/`max_tokens`/`tool_use`/`refusal`, `STOP`/`MAX_TOKENS`/`SAFETY`); any other string
is sent verbatim. Timing: `delay=` holds back the response headers (a slow or hung upstream),
`chunk_delay=` sleeps between stream events (a slow stream: the first event leaves at once). A "chunk"
is one stream event in the provider's framing (for Anthropic, `message_start` and `ping` count).

**Recording.** `fake.requests` lists every request received (a `RecordedRequest` with `method`,
`path`, `query`, case-insensitive `headers`, parsed JSON `body`, `raw_body` and `stream`), including
refused ones; `fake.last_request`, `fake.clear_requests()`, `fake.reset()` (requests and script).

Two more fields show what only the upstream can see. `connection` numbers the TCP connection the
request came on (1, 2, … in the order the fake first saw them), so a client that keeps connections
alive sends many requests with one number. `delivery` (a `Delivery`, filled in as the answer goes out)
tells how the answer went: `events_sent` (stream events handed to the connection), `outcome` (None
while sending, then `"complete"`, `"dropped"` by a scripted `Reply.drop`, `"disconnected"` when the
client hung up first, or `"stopped"` with the fake), `client_disconnected`, and `wait(timeout)`::

    fake.script.reply(Reply.text("word " * 40, chunks=40, chunk_delay=0.1))
    ...                                              # the client reads two events and hangs up
    delivery = fake.last_request.delivery
    assert delivery.wait(2) and delivery.client_disconnected and delivery.events_sent < 40

**Without sockets.** `ScriptedUpstream` is the same idea one layer down: an in-process `Upstream`
(the interface in `ferryman.core.upstream`) that plays `Answer`, `Stream` and `Fail` steps in
canonical types, so the core's pipeline and attempt loop are tested with no server, thread or port::

    up = ScriptedUpstream(name="a")
    up.script(Fail.status(503, retry_after=1.0), Stream.text("a b c", chunks=3, fail_after=2))
    up.script(Answer.text("hi", usage=Usage(3, 2)))      # then the echo default, as above
    assert [call.kind for call in up.calls] == ["chat", "stream", "chat"]   # after three calls
    assert up.streams_closed == up.streams_opened                            # every stream closed

See `ferryman.testing.scripted` for every step.

**Command line.** `python -m ferryman.testing openai|anthropic|gemini [--port N] [--host H]
[--api-key K]` serves one fake until SIGINT or SIGTERM, printing its base URL first.
"""

from ferryman.testing._delivery import Delivery, Outcome
from ferryman.testing._script import (
    Drop,
    Fault,
    HttpError,
    Malformed,
    NotJson,
    Reply,
    Script,
    ThinkingSpec,
    ToolCallSpec,
    Usage,
)
from ferryman.testing._server import FakeServer, RecordedRequest
from ferryman.testing.anthropic import FakeAnthropic
from ferryman.testing.gemini import FakeGemini
from ferryman.testing.openai import FakeOpenAI
from ferryman.testing.scripted import Answer, Fail, ScriptedCall, ScriptedUpstream, Step, Stream

__all__ = [
    "Answer",
    "Delivery",
    "Drop",
    "Fail",
    "FakeAnthropic",
    "FakeGemini",
    "FakeOpenAI",
    "FakeServer",
    "Fault",
    "HttpError",
    "Malformed",
    "NotJson",
    "Outcome",
    "RecordedRequest",
    "Reply",
    "Script",
    "ScriptedCall",
    "ScriptedUpstream",
    "Step",
    "Stream",
    "ThinkingSpec",
    "ToolCallSpec",
    "Usage",
]
