"""Token counters built offline from bpe-openai's rank files: exact for OpenAI models, high for others,
and what the limit stages reserve with them."""

from __future__ import annotations

import gzip
import hashlib
import importlib
import importlib.util
import logging
import math
import socket
from pathlib import Path
from typing import Any

import pytest

from ferryman import tokenizers as tokenizers_module
from ferryman.core.caller import Caller, Limits
from ferryman.core.canonical import ChatRequest, EmbeddingRequest, ImagePart, Message, TextPart
from ferryman.core.estimate import InputEstimates, estimate_input_tokens
from ferryman.core.exchange import Exchange
from ferryman.core.limits import MINUTE, RateLimits
from ferryman.core.routing import Router, Target
from ferryman.core.shared_state import Window
from ferryman.store.memory import MemoryReservations, MemoryWindowCounters
from ferryman.testing import ScriptedUpstream
from ferryman.tokenizers import (
    CONSERVATIVE_IMAGE_TOKENS,
    ENCODINGS,
    IMAGE_TOKENS,
    LOW_DETAIL_IMAGE_TOKENS,
    SAFETY_FACTOR,
    ConservativeCounter,
    TiktokenCounter,
    Tokenizers,
    bundled_data_dir,
    count_by_character_class,
)

SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. Budgets reserve the worst-case cost first.",
    "code": "def estimate(request):\n    return max(sum(len(m.text) for m in request.messages) // 4, 1)\n",
    "json": '{"type":"object","properties":{"city":{"type":"string"},"unit":{"enum":["c","f"]}}}',
    "cjk": "東京は日本の首都です。今日はとても良い天気ですね。我们明天去北京。",
    "korean": "안녕하세요, 오늘 날씨가 정말 좋네요.",
    "russian": "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "hindi": "नमस्ते, आप कैसे हैं? मैं ठीक हूँ।",
    "numbers": "3.14159, 2.71828, 1.41421, 42, 1000000, 2024-05-13 12:34:56",
    "csv": "1,2,3,4,5,6,7,8,9,10\n11,12,13,14,15\n",
    "emoji": "🦊🚀✨🎉 ok 👍🏽",
    "base64": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "math": "∑_{i=1}^{n} x_i² ≤ ∫₀^∞ e^{-t} dt ≈ 1",
}


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    """One loaded set for the module: building an encoding takes a noticeable fraction of a second."""
    loaded = Tokenizers()
    loaded.preload()
    return loaded


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Sockets refuse to connect and tiktoken's cache is an empty directory, which is returned."""

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"network access to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    return cache


def o200k(tokenizers: Tokenizers) -> TiktokenCounter:
    counter = tokenizers.for_model("openai", "gpt-4o")
    assert isinstance(counter, TiktokenCounter)
    return counter


def test_known_strings_count_as_tiktoken_documents(tokenizers: Tokenizers) -> None:
    cl100k, o200k_base = tokenizers.encoding("cl100k_base"), tokenizers.encoding("o200k_base")
    assert cl100k is not None and o200k_base is not None
    assert cl100k.encode_ordinary("hello world") == [15339, 1917]
    assert o200k_base.encode_ordinary("hello world") == [24912, 2375]
    expected = {
        "Say this is a test!": (6, 6),
        "antidisestablishmentarianism": (6, 6),
        "お誕生日おめでとう": (9, 8),
    }
    for text, (in_cl100k, in_o200k) in expected.items():
        assert len(cl100k.encode_ordinary(text)) == in_cl100k, text
        assert len(o200k_base.encode_ordinary(text)) == in_o200k, text


def test_special_token_markup_in_a_prompt_is_counted_as_text(tokenizers: Tokenizers) -> None:
    assert o200k(tokenizers).count_text("<|endoftext|>") > 1


def test_a_chat_is_counted_as_openai_bills_it(tokenizers: Tokenizers) -> None:
    # OpenAI's API reference answers exactly this request with "prompt_tokens": 13.
    request = ChatRequest(
        model="gpt-3.5-turbo", messages=(Message("user", (TextPart("Say this is a test!"),)),)
    )
    counter = tokenizers.for_model("openai", "gpt-3.5-turbo")
    assert estimate_input_tokens(request, counter) == 3 + 1 + 6 + 3


def test_images_are_counted_at_fixed_figures(tokenizers: Tokenizers) -> None:
    counter = o200k(tokenizers)
    assert counter.count_image(ImagePart("https://x/a.png", detail="low")) == LOW_DETAIL_IMAGE_TOKENS == 85
    assert counter.count_image(ImagePart("https://x/a.png")) == IMAGE_TOKENS == 765
    claude = tokenizers.for_model("anthropic", "claude-sonnet-4-5")
    assert claude.count_image(ImagePart("https://x/a.png", detail="low")) == CONSERVATIVE_IMAGE_TOKENS


def test_embeddings_count_each_input_exactly(tokenizers: Tokenizers) -> None:
    request = EmbeddingRequest(model="text-embedding-3-small", inputs=("hello world", "Say this is a test!"))
    assert estimate_input_tokens(request, tokenizers.for_model("openai", "text-embedding-3-small")) == 8


@pytest.mark.parametrize(
    ("provider", "model", "encoding"),
    [
        ("openai", "gpt-4o", "o200k_base"),
        ("openai", "gpt-4o-mini-2024-07-18", "o200k_base"),
        ("openai", "gpt-4.1-mini", "o200k_base"),
        ("openai", "o3-mini", "o200k_base"),
        ("openai", "gpt-5", "o200k_base"),
        ("openai", "gpt-oss-120b", "o200k_base"),
        ("openai", "gpt-4", "cl100k_base"),
        ("openai", "gpt-3.5-turbo-0125", "cl100k_base"),
        ("openai", "text-embedding-3-large", "cl100k_base"),
        ("openai", "text-embedding-ada-002", "cl100k_base"),
        ("openai-compatible", "gpt-4o", "o200k_base"),
    ],
)
def test_openai_models_get_their_family_encoding(
    tokenizers: Tokenizers, provider: str, model: str, encoding: str
) -> None:
    counter = tokenizers.for_model(provider, model)
    assert isinstance(counter, TiktokenCounter)
    assert counter.encoding.name == encoding


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("anthropic", "claude-sonnet-4-5"),
        ("gemini", "gemini-2.5-flash"),
        ("openai-compatible", "llama-3.1-70b"),
        ("openai", "my-own-model"),  # tiktoken does not know it: its tokenizer could be anything
        ("openai", "text-davinci-003"),  # p50k, which is not bundled
        ("anthropic", "gpt-4o"),  # a model id means nothing outside its own provider
    ],
)
def test_every_other_model_is_counted_conservatively(
    tokenizers: Tokenizers, provider: str, model: str
) -> None:
    counter = tokenizers.for_model(provider, model)
    assert isinstance(counter, ConservativeCounter)
    assert counter.encoding is not None and counter.encoding.name == "cl100k_base"


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_the_conservative_count_is_never_below_openais(tokenizers: Tokenizers, kind: str) -> None:
    text = SAMPLES[kind]
    cl100k, o200k_base = tokenizers.encoding("cl100k_base"), tokenizers.encoding("o200k_base")
    assert cl100k is not None and o200k_base is not None
    exact = len(o200k_base.encode_ordinary(text))
    estimated = tokenizers.for_model("anthropic", "claude-sonnet-4-5").count_text(text)
    assert estimated >= 1.2 * exact
    assert estimated >= SAFETY_FACTOR * len(cl100k.encode_ordinary(text))  # the weaker OpenAI vocabulary
    assert count_by_character_class(text) >= max(exact, len(cl100k.encode_ordinary(text)))  # no encoding


def test_the_character_rule_weighs_each_class_as_documented() -> None:
    assert count_by_character_class("ab 12!é") == 6  # 3 letters and spaces halved, 3 whole, 2 bytes at 3/4
    assert count_by_character_class("") == 0


def test_a_lone_surrogate_is_counted_not_an_error(tokenizers: Tokenizers) -> None:
    text = "broken \ud800 pair"
    assert o200k(tokenizers).count_text(text) > 0
    assert tokenizers.for_model("gemini", "gemini-2.5-pro").count_text(text) > 0
    assert count_by_character_class(text) == math.ceil(12 / 2 + 0 + 3 * 3 / 4)


def test_a_conservative_chat_estimate_exceeds_the_exact_one(tokenizers: Tokenizers) -> None:
    request = ChatRequest(
        model="m", messages=tuple(Message("user", (TextPart(text),)) for text in SAMPLES.values())
    )
    exact = estimate_input_tokens(request, tokenizers.for_model("openai", "gpt-4o"))
    assert estimate_input_tokens(request, tokenizers.for_model("gemini", "gemini-2.5-pro")) > 1.3 * exact


def test_encodings_load_without_any_network_or_cache(no_network: Path) -> None:
    counter = Tokenizers().for_model("openai", "gpt-4o")
    assert isinstance(counter, TiktokenCounter)
    assert counter.count_text("hello world") == 2
    assert list(no_network.iterdir()) == []  # nothing was downloaded, nothing was cached


@pytest.mark.parametrize("name", list(ENCODINGS))
def test_the_encodings_equal_the_ones_tiktoken_would_download(no_network: Path, name: str) -> None:
    # Seed tiktoken's cache with the bundled file, as its blob URL's SHA-1 names it, and let tiktoken
    # build its own encoding: the pattern, the special tokens and every rank must match ours.
    openai_public: Any = importlib.import_module("tiktoken_ext.openai_public")
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    ranks_file = gzip.decompress((bundled_data_dir() / ENCODINGS[name].file).read_bytes())
    (no_network / hashlib.sha1(url.encode()).hexdigest()).write_bytes(ranks_file)  # noqa: S324 - tiktoken's key
    theirs = getattr(openai_public, name)()
    ours = Tokenizers().encoding(name)
    assert ours is not None
    assert ours._pat_str == theirs["pat_str"]
    assert ours._special_tokens == theirs["special_tokens"]
    assert ours._mergeable_ranks == theirs["mergeable_ranks"]


def test_missing_files_fall_back_to_the_character_rule_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizers = Tokenizers(data_dir=tmp_path)
    request = ChatRequest(model="gpt-4o", messages=(Message("user", (TextPart(SAMPLES["english"]),)),))
    with caplog.at_level(logging.WARNING, logger="ferryman.tokenizers"):
        estimates = [
            estimate_input_tokens(request, tokenizers.for_model("openai", "gpt-4o")) for _ in range(3)
        ]
        tokenizers.for_model("anthropic", "claude-sonnet-4-5")
    counter = tokenizers.for_model("openai", "gpt-4o")
    assert counter == ConservativeCounter(None)
    assert (
        estimates[0]
        == 3 + count_by_character_class("user") + count_by_character_class(SAMPLES["english"]) + 3
    )
    assert len(set(estimates)) == 1
    assert [record.getMessage().split()[1] for record in caplog.records] == ["o200k_base", "cl100k_base"]


def test_a_damaged_file_is_refused_not_trusted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = ENCODINGS["o200k_base"]
    (tmp_path / files.file).write_bytes(gzip.compress(b"aGVsbG8= 0\n"))  # parses, but not OpenAI's file
    (tmp_path / ENCODINGS["cl100k_base"].file).write_bytes(b"not gzip at all")
    tokenizers = Tokenizers(data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="ferryman.tokenizers"):
        tokenizers.preload()
    assert tokenizers.encoding("o200k_base") is None and tokenizers.encoding("cl100k_base") is None
    assert "not the o200k_base OpenAI published" in caplog.text
    assert isinstance(tokenizers.for_model("openai", "gpt-4"), ConservativeCounter)


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / ENCODINGS["o200k_base"].file).write_bytes(gzip.compress(b"x" * 1000)[:20])
    assert Tokenizers(data_dir=tmp_path).encoding("o200k_base") is None


def test_without_bpe_openai_installed_every_count_is_by_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="bpe-openai"):
        bundled_data_dir()
    assert Tokenizers().for_model("openai", "gpt-4o") == ConservativeCounter(None)


@pytest.mark.parametrize(
    ("models", "loaded"),
    [
        ([("openai", "gpt-4o-mini")], ["o200k_base"]),
        ([("anthropic", "claude-sonnet-4-5"), ("fake", "m")], ["cl100k_base"]),
        ([("openai", "gpt-4o"), ("gemini", "gemini-2.5-pro")], ["cl100k_base", "o200k_base"]),
        ([], []),
    ],
)
def test_preload_loads_only_the_encodings_the_deployed_models_count_with(
    monkeypatch: pytest.MonkeyPatch, models: list[tuple[str, str]], loaded: list[str]
) -> None:
    real, names = tokenizers_module.load_encoding, []

    def recorded(name: str, data_dir: Path) -> Any:
        names.append(name)
        return real(name, data_dir)

    monkeypatch.setattr(tokenizers_module, "load_encoding", recorded)
    Tokenizers().preload(models)
    assert sorted(names) == loaded


def test_preload_takes_the_conservative_encoding_when_a_models_own_is_missing(tmp_path: Path) -> None:
    data = bundled_data_dir()
    cl100k = ENCODINGS["cl100k_base"].file
    (tmp_path / cl100k).write_bytes((data / cl100k).read_bytes())  # o200k's file is missing
    tokenizers = Tokenizers(data_dir=tmp_path)
    tokenizers.preload([("openai", "gpt-4o")])
    counter = tokenizers.for_model("openai", "gpt-4o")
    assert isinstance(counter, ConservativeCounter) and counter.encoding is not None


def _exchange(request: ChatRequest) -> Exchange:
    exchange = Exchange(request_id="req")
    exchange.admit(Caller(key_alias="app", key_id="k1", key_limits=Limits(tpm_limit=100_000)), request)
    return exchange


@pytest.mark.parametrize(
    ("provider", "model", "conservative"),
    [("openai", "gpt-4o-mini", False), ("anthropic", "claude-sonnet-4-5", True)],
)
async def test_the_tpm_reservation_is_the_deployments_tokenizer_count(
    tokenizers: Tokenizers, provider: str, model: str, conservative: bool
) -> None:
    request = ChatRequest(model="m", messages=(Message("user", (TextPart(SAMPLES["english"]),)),))
    deployment = Target(ScriptedUpstream(), provider, "d", model, None)
    counters = MemoryWindowCounters()
    stage = RateLimits(
        counters,
        MemoryReservations(),
        router=Router({"m": [deployment]}),
        estimates=InputEstimates(tokenizers),
    )
    await stage.enter(_exchange(request))
    reserved = await counters.count(Window("tpm:key:k1", 100_000, MINUTE))
    o200k_base, cl100k = tokenizers.encoding("o200k_base"), tokenizers.encoding("cl100k_base")
    assert o200k_base is not None and cl100k is not None
    if conservative:  # cl100k's count of role and text, times the safety factor, in OpenAI's framing
        texts = ("user", SAMPLES["english"])
        counted = sum(math.ceil(len(cl100k.encode_ordinary(t)) * SAFETY_FACTOR) for t in texts)
    else:
        counted = len(o200k_base.encode_ordinary("user")) + len(
            o200k_base.encode_ordinary(SAMPLES["english"])
        )
    assert reserved == 3 + counted + 3
    assert reserved == estimate_input_tokens(request, tokenizers.for_model(provider, model))
    assert reserved != estimate_input_tokens(request)  # not the characters rule
