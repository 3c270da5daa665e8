"""Token counters for input estimates: tiktoken's exact count for OpenAI models, a high one for the rest.

Nothing here touches the network. tiktoken alone would download its rank files from OpenAI's blob
store on first use (caching them under `TIKTOKEN_CACHE_DIR` or the temp dir), which a gateway without
egress cannot do and a gateway with it should not do mid-request. The `bpe-openai` package ships the
same files gzipped, byte for byte: their SHA-256 after decompression is checked against the hashes
tiktoken pins, and the encodings are built from them with `tiktoken.Encoding` directly. The split
patterns and special tokens below are tiktoken's own (`tiktoken_ext.openai_public`), copied because
tiktoken exposes them only from the constructors that download; a test checks the result is equal to
tiktoken's encoding.

An encoding loads in about 0.3 s, once per `Tokenizers` (one per app; `preload` at start-up spares the
first request). If the files are missing or damaged, every model falls back to the character rule of
`count_by_character_class` with one warning per encoding: an estimate never fails a request.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.util
import logging
import math
import string
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tiktoken

from ferryman.core.canonical import ImagePart
from ferryman.core.estimate import TokenCounter

log = logging.getLogger(__name__)

OPENAI_PROVIDERS = frozenset({"openai", "openai-compatible"})  # where a model tiktoken knows is OpenAI's

# OpenAI's published image figures: "low" detail is a flat 85; high (and "auto", which picks high for
# most photos) is 85 plus 170 per 512-pixel tile, 765 for a 1024x1024 image scaled to 768x768. Wider
# images and the patch-billed mini models can cost more; that error lasts one request (it is settled).
IMAGE_TOKENS = 765
LOW_DETAIL_IMAGE_TOKENS = 85

# Other providers bill images higher: Claude about width * height / 750, so ~1,600 at its
# ~1.15-megapixel resize limit; Gemini 258 per 768x768 tile, 1,032 for a 1024x1024 image. The larger
# figure is the estimate.
CONSERVATIVE_IMAGE_TOKENS = 1600

# Other tokenizers split the same text into more tokens than OpenAI's: published comparisons of Claude
# 3.5 with GPT-4o found about 16% more on English prose and about 30% more on code. The count starts
# from cl100k rather than o200k because o200k's larger vocabulary saves a third to two thirds on
# Cyrillic, Devanagari and CJK text, which smaller vocabularies do not; Gemini's large vocabulary
# counts nearer o200k. 1.5 covers the measured gaps with headroom for tokenizers that change between
# model versions: an estimate too high holds a little more quota until the request settles, one too
# low lets a budget be overspent, so the factor errs high.
SAFETY_FACTOR = 1.5
CONSERVATIVE_ENCODING = "cl100k_base"


@dataclass(frozen=True, slots=True)
class _EncodingFiles:
    """Where an encoding's ranks are and how to build it, as `tiktoken_ext.openai_public` does."""

    file: str
    sha256: str  # of the decompressed file: the hash tiktoken pins for OpenAI's download
    pat_str: str
    special_tokens: tuple[tuple[str, int], ...]


_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_CL100K_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501 - tiktoken's, verbatim

ENCODINGS: dict[str, _EncodingFiles] = {
    "o200k_base": _EncodingFiles(
        "o200k_base.tiktoken.gz",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PATTERN,
        (("<|endoftext|>", 199999), ("<|endofprompt|>", 200018)),
    ),
    "cl100k_base": _EncodingFiles(
        "cl100k_base.tiktoken.gz",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PATTERN,
        (
            ("<|endoftext|>", 100257),
            ("<|fim_prefix|>", 100258),
            ("<|fim_middle|>", 100259),
            ("<|fim_suffix|>", 100260),
            ("<|endofprompt|>", 100276),
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class TiktokenCounter:
    """An OpenAI model's own count: its encoding for text, OpenAI's figures for images."""

    encoding: tiktoken.Encoding

    def count_text(self, text: str) -> int:
        """Exactly the tokens OpenAI bills for `text` (the API reads special-token markup as text)."""
        return len(self.encoding.encode_ordinary(text))

    def count_image(self, image: ImagePart) -> int:
        """85 at low detail, else the 1024x1024 high-detail figure."""
        return LOW_DETAIL_IMAGE_TOKENS if image.detail == "low" else IMAGE_TOKENS


@dataclass(frozen=True, slots=True)
class ConservativeCounter:
    """A count for models whose tokenizer is not at hand: cl100k's times `factor`, or without cl100k
    the character rule; images at the highest per-image figure among the providers."""

    encoding: tiktoken.Encoding | None
    factor: float = SAFETY_FACTOR

    def count_text(self, text: str) -> int:
        """At least the tokens any provider's tokenizer is expected to make of `text`."""
        if self.encoding is None:
            return count_by_character_class(text)
        return math.ceil(len(self.encoding.encode_ordinary(text)) * self.factor)

    def count_image(self, image: ImagePart) -> int:
        """The same figure whatever the detail: only OpenAI honours that hint."""
        return CONSERVATIVE_IMAGE_TOKENS


# Byte classes for `count_by_character_class`, which counts with bytes.translate: C speed, no loop.
_NON_ASCII_BYTES = bytes(range(128, 256))
_LETTER_AND_SPACE_BYTES = (string.ascii_letters + string.whitespace).encode()


def count_by_character_class(text: str) -> int:
    """Half a token per ASCII letter or space, a whole one per ASCII digit or symbol, and three
    quarters of a token per UTF-8 byte of anything else.

    The fallback when no encoding could be loaded, so it must not undercount without a tokenizer to
    check against, and it runs about twice o200k's count on English prose to be sure of that. Letters
    merge into words (4 to 5 characters a token), but random letters (ids, base64) run near 2 a token;
    numbers split in threes around their separators and symbols often stand alone; a CJK character
    (3 bytes) costs up to a token and an emoji (4 bytes) up to three, where BPE falls back to bytes.
    """
    encoded = text.encode("utf-8", "surrogatepass")  # a lone surrogate from a client is still counted
    other_bytes = len(encoded) - len(encoded.translate(None, _NON_ASCII_BYTES))
    light = len(encoded) - len(encoded.translate(None, _LETTER_AND_SPACE_BYTES))
    return math.ceil(light / 2 + (len(encoded) - other_bytes - light) + other_bytes * 3 / 4)


@functools.lru_cache(maxsize=1024)
def openai_encoding_name(model: str) -> str | None:
    """The encoding of OpenAI model `model` by tiktoken's own table (o200k for the gpt-4o, gpt-4.1,
    gpt-5 and o-series families, cl100k for gpt-4, gpt-3.5 and the embedding models), or None when
    tiktoken does not know it or it predates cl100k."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return None
    name = "o200k_base" if name == "o200k_harmony" else name  # same ranks; only chat markup differs
    return name if name in ENCODINGS else None


def bundled_data_dir() -> Path:
    """The directory holding `bpe-openai`'s rank files, found without importing that package (its
    native tokenizer is not needed, only its data)."""
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bpe-openai package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_encoding(name: str, data_dir: Path) -> tiktoken.Encoding:
    """Build encoding `name` from its rank file in `data_dir`, checked against tiktoken's pinned hash.

    The file is parsed here rather than by `tiktoken.load.load_tiktoken_bpe`, which reads plain files
    only and writes a copy of each into tiktoken's cache directory.
    """
    files = ENCODINGS[name]
    ranks_file = gzip.decompress((data_dir / files.file).read_bytes())
    if hashlib.sha256(ranks_file).hexdigest() != files.sha256:
        raise ValueError(f"{files.file} is not the {name} OpenAI published")
    ranks: dict[bytes, int] = {}
    for line in ranks_file.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(
        name, pat_str=files.pat_str, mergeable_ranks=ranks, special_tokens=dict(files.special_tokens)
    )


class Tokenizers:
    """The `TokenCounters` of one app: tiktoken for the models it knows are OpenAI's, the conservative
    counter for every other model, each encoding loaded on first use and kept."""

    def __init__(self, data_dir: Path | None = None, *, safety_factor: float = SAFETY_FACTOR) -> None:
        self._data_dir = data_dir
        self._safety_factor = safety_factor
        self._encodings: dict[str, tiktoken.Encoding | None] = {}
        self._lock = threading.Lock()  # preload may run in a worker thread while requests arrive

    def for_model(self, provider: str, model: str) -> TokenCounter:
        """The counter for `model` as `provider` serves it; conservative unless tiktoken knows it."""
        name = openai_encoding_name(model) if provider in OPENAI_PROVIDERS else None
        encoding = self.encoding(name) if name is not None else None
        if encoding is not None:
            return TiktokenCounter(encoding)
        return ConservativeCounter(self.encoding(CONSERVATIVE_ENCODING), self._safety_factor)

    def preload(self, models: Iterable[tuple[str, str]] | None = None) -> None:
        """Load now, so that no request waits for one, the encodings that the `(provider, model)`
        pairs `models` count with (every encoding when None: about 0.5 s of CPU).

        Each encoding holds its ranks in memory, about 80 MB for o200k and 30 MB for cl100k per
        process, so a gateway loads only those its deployments use. cl100k is loaded as well when an
        OpenAI model's own encoding cannot be, since that model then counts conservatively.
        """
        names = ENCODINGS if models is None else {self.encoding_name(*model) for model in models}
        for name in names:
            if self.encoding(name) is None:
                self.encoding(CONSERVATIVE_ENCODING)

    @staticmethod
    def encoding_name(provider: str, model: str) -> str:
        """The encoding `for_model(provider, model)` counts with when every encoding loads."""
        name = openai_encoding_name(model) if provider in OPENAI_PROVIDERS else None
        return name or CONSERVATIVE_ENCODING

    def encoding(self, name: str) -> tiktoken.Encoding | None:
        """Encoding `name`, loaded once; None (warned about once) if its file is missing or damaged."""
        with self._lock:
            if name not in self._encodings:
                self._encodings[name] = self._load(name)
            return self._encodings[name]

    def _load(self, name: str) -> tiktoken.Encoding | None:
        try:
            return load_encoding(name, self._data_dir or bundled_data_dir())
        except (OSError, EOFError, ValueError) as exc:
            log.warning("tokenizer %s unavailable (%s); estimating input tokens by characters", name, exc)
            return None
