"""Recipes: YAML files that configure a run; command-line flags override them.

Precedence is CLI > recipe > defaults. Every section is a pydantic model that forbids unknown
keys, so a typo in a recipe is an error naming its path (and the key it probably meant).
"""

from __future__ import annotations

import difflib
from urllib.parse import urlsplit, urlunsplit
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from .errors import UserError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingConfig(Section):
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, description="Most new tokens per reply.")


class PriceConfig(Section):
    """What an endpoint charges, for cost estimates and the cost in manifests."""

    input: float = Field(0.0, ge=0, description="Price per 1M prompt (input) tokens, in your currency.")
    output: float = Field(0.0, ge=0, description="Price per 1M completion (output) tokens.")


class _BackendBase(Section):
    """What every backend kind has: which kind, which model, how it samples, what it costs."""

    kind: str = Field("local", description="local: a model run in-process; openai: any OpenAI-compatible endpoint; "
                                           "fake: scripted replies (tests).")
    model: str = Field("packaged:smollm2-135m-instruct",
                       description="Model: packaged:NAME, a local folder, or a hub name (local); "
                                   "the served model's name (openai).")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    prices: PriceConfig | None = Field(None, description="Prices per 1M input/output tokens: costs in "
                                                         "estimates (--estimate) and manifests.")

    def _identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "sampling": self.sampling.model_dump()}


class LocalBackendConfig(_BackendBase):
    """`backend: {kind: local}`: a model run in-process with transformers (the default)."""

    kind: Literal["local"] = Field("local", description="local: a model run in-process.")
    adapter: Path | None = Field(None, description="A LoRA adapter folder (from `forge train`) applied on top "
                                                   "of the model.")
    batch_size: int = Field(8, ge=1, description="Prompts generated together.")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the usable cores.")
    repetition_penalty: float = Field(1.15, ge=1.0, description="Keeps small local models from looping.")

    def identity(self) -> dict[str, Any]:
        """What decides the outputs, for config hashes: not batches or threads; the adapter by its weights."""
        ident = self._identity()
        ident["repetition_penalty"] = self.repetition_penalty
        if self.adapter is not None:
            ident["adapter"] = _adapter_digest(self.adapter)
        return ident


class OpenAIBackendConfig(_BackendBase):
    """`backend: {kind: openai}`: any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server, Ollama)."""

    kind: Literal["openai"] = Field("openai", description="openai: any OpenAI-compatible endpoint.")
    base_url: str | None = Field(None, description="Endpoint, e.g. http://127.0.0.1:8000/v1 (omit for api.openai.com). "
                                                   "A key written into it (http://user:KEY@host/v1) is sent as the "
                                                   "Bearer token when api_key_env is unset, and masked in manifests.")
    api_key_env: str = Field("OPENAI_API_KEY",
                             description="Name of the environment variable that holds the API key.")
    concurrency: int = Field(16, ge=1, le=4096, description="Requests in flight at once.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds before one request is abandoned and retried.")
    max_retries: int = Field(6, ge=0, description="Retries per request on 429, 5xx, timeouts, dropped connections.")
    backoff_s: float = Field(0.5, ge=0, description="First retry delay; doubles each retry, with jitter.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest delay between retries.")
    json_mode: bool = Field(True, description="Ask the endpoint for response_format=json_object when JSON is wanted.")
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = Field(
        "max_tokens", description="Which request field carries the token limit (newer OpenAI models "
                                  "want max_completion_tokens).")

    @field_validator("base_url")
    @classmethod
    def _base_url_is_http(cls, value: str | None) -> str | None:
        """A malformed endpoint is a config error at once, not 30 retries of a request."""
        if value is None:
            return None
        example = "give e.g. http://127.0.0.1:8000/v1"
        shown = redact_url(value)
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{shown!r} is not an http:// or https:// URL; {example}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{shown!r}: the port is not a number from 1 to 65535; {example}") from None
        if not parts.hostname:
            raise ValueError(f"{shown!r} names no host; {example}")
        if port == 0:
            raise ValueError(f"{shown!r}: the port is not a number from 1 to 65535; {example}")
        return value.strip()

    def identity(self) -> dict[str, Any]:
        """What decides the outputs, for config hashes: not concurrency, timeouts or keys (a key
        written into base_url as http://user:KEY@host is masked)."""
        ident = self._identity()
        ident["base_url"] = redact_url(self.base_url)
        return ident


class FakeBackendConfig(_BackendBase):
    """`backend: {kind: fake}`: scripted replies, for tests and dry runs; no model is loaded."""

    kind: Literal["fake"] = Field("fake", description="fake: scripted replies (tests).")
    replies: list[str] = Field(default_factory=list, description="Scripted replies, in order.")
    default_reply: str = Field("ok", description="Reply once the script runs out.")
    delay_s: float = Field(0.0, ge=0, description="Seconds each reply takes.")

    def identity(self) -> dict[str, Any]:
        """What decides the outputs, for config hashes: the kind, model and sampling (as before the split)."""
        return self._identity()


BACKEND_KINDS: dict[str, type[_BackendBase]] = {"local": LocalBackendConfig, "openai": OpenAIBackendConfig,
                                                "fake": FakeBackendConfig}


def _backend_kind(value: Any) -> str | None:
    """The tag that picks a backend's model: its `kind` (local when a mapping leaves it out)."""
    if isinstance(value, dict):
        kind = value.get("kind", "local")
        return kind if isinstance(kind, str) and kind in BACKEND_KINDS else None
    kind = getattr(value, "kind", None)
    return kind if kind in BACKEND_KINDS else None


# One model per kind, chosen by `kind` (default local): a recipe keeps the shape
# `backend: {kind: openai, base_url: ..., model: ...}`, and a key of another kind is an unknown key.
BackendConfig = Annotated[
    Union[Annotated[LocalBackendConfig, Tag("local")], Annotated[OpenAIBackendConfig, Tag("openai")],
          Annotated[FakeBackendConfig, Tag("fake")]],
    Discriminator(_backend_kind, custom_error_type="backend_kind",
                  custom_error_message="Input should be a backend section with kind 'local', 'openai' or 'fake'"),
]


def parse_backend(data: dict[str, Any] | _BackendBase) -> LocalBackendConfig | OpenAIBackendConfig | FakeBackendConfig:
    """A backend section from a mapping (its `kind` picks the model, local by default)."""
    from pydantic import TypeAdapter

    return TypeAdapter(BackendConfig).validate_python(data)


def local_settings(config: _BackendBase) -> LocalBackendConfig:
    """The settings a model run in-process takes under this backend section (forge chat --adapter, forge
    serve): the section itself when it is local, else the local defaults with its sampling."""
    if isinstance(config, LocalBackendConfig):
        return config
    return LocalBackendConfig(sampling=config.sampling)


def redact_url(url: str | None) -> str | None:
    """`url` with any password (or lone user token) in it masked: http://u:KEY@host -> http://u:***@host."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user, sep, _password = userinfo.partition(":")
    masked = f"{user}:***" if sep else "***"
    return urlunsplit(parts._replace(netloc=f"{masked}@{host}"))


def _rm_adapter(folder: Path) -> Path:
    """A reward model's adapter folder, given it or the train/<name>/ folder above it."""
    folder = Path(folder)
    return folder / "adapter" if (folder / "adapter").is_dir() else folder


def _adapter_digest(folder: Path) -> str:
    """The adapter's weights' hash (a retrained adapter at the same path is a different model)."""
    import hashlib

    weights = Path(folder) / "adapter_model.safetensors"
    if not weights.is_file():
        return str(folder)
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]


class CompleteConfig(Section):
    input: Path | None = Field(None, description="JSONL of prompts: {\"prompt\": ...} or {\"messages\": [...]}.")
    json_replies: bool = Field(False, description="Ask for JSON replies and parse them.")
    seed: int = Field(0, description="Seed; each prompt's own seed derives from it and its index.")


class NLIConfig(Section):
    kind: Literal["embedded", "hf", "llm"] = Field(
        "embedded", description="embedded: the cross-encoder we train (built once into the cache); "
                                "hf: any sequence-classification NLI checkpoint; llm: the chat backend as judge.")
    model: str | None = Field(None, description="hf: a local folder or hub name, e.g. "
                                                "cross-encoder/nli-deberta-v3-base.")
    batch_size: int = Field(64, ge=1, description="Pairs per forward pass.")
    max_length: int = Field(128, ge=8, le=512, description="Tokens per pair; longer pairs are truncated with a warning.")
    quantize: bool = Field(False, description="int8 dynamic quantization on CPU: about 1.7x faster, but it cost "
                                              "the embedded model 3 points of accuracy; off by default.")
    trace: bool = Field(True, description="TorchScript-trace the model on CPU: about 1.3x faster, same outputs "
                                          "(a model that does not trace runs eagerly).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 on a CPU that multiplies bf16 in hardware (AMX / AVX512-BF16), where the "
                            "embedded NLI runs about 2.7x faster with the same accuracy; float32 elsewhere.")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the usable cores.")


class PairConfig(Section):
    """`forge pair`: which users talk to each other (embedding similarity, FAISS kNN, greedy matching)."""

    profiles: Path | None = Field(None, description="Profile JSONL (default <run_dir>/profiles.jsonl); a "
                                                    "Synthetic-Persona-Chat JSONL(.gz) also works: each distinct "
                                                    "persona becomes a profile.")
    model: str = Field("packaged:minilm-l6", description="Sentence-embedding model: packaged:NAME, a local "
                                                         "folder, or a hub name.")
    strategy: Literal["greedy", "random"] = Field(
        "greedy", description="greedy: most similar in-band pairs first; random: random pairs (a baseline).")
    # Measured on Synthetic-Persona-Chat personas with all-MiniLM-L6-v2 (see stages/pairing.py).
    low: float = Field(0.5, ge=-1.0, le=1.0, description="Least similarity for a pair (greedy): above 95% of "
                                                         "random pairs.")
    high: float = Field(0.75, ge=-1.0, le=1.0, description="Most similarity for a pair (greedy): above 0.75, "
                                                           "43% or more of SPC pairs share 3+ identical attributes.")
    per_user: int = Field(1, ge=1, description="Most conversations one user takes part in.")
    k: int = Field(10, ge=1, description="Nearest neighbours per profile at or below `high`: the candidate partners.")
    max_identical_attributes: int = Field(
        1, ge=0, description="Pairs sharing more identical attributes than this are near-copies, never paired "
                             "(one shared attribute is a good topic; three is the same person).")
    search_depth: int = Field(160, ge=1, description="How far down a profile's neighbour list the search goes "
                                                     "past near-copies (above `high`) to find its k candidates.")
    index: Literal["auto", "exact", "hnsw"] = Field(
        "auto", description="exact: FAISS IndexFlatIP; hnsw: approximate (IndexHNSWFlat); auto: exact up to "
                            "approximate_above profiles, HNSW beyond.")
    approximate_above: int = Field(20_000, ge=2, description="auto: profiles beyond which the HNSW index is used.")
    hnsw_m: int = Field(32, ge=4, description="HNSW links per node (more: better recall, more memory).")
    hnsw_ef_construction: int = Field(40, ge=8, description="HNSW build effort.")
    hnsw_ef_search: int = Field(64, ge=1, description="HNSW search effort (more: better recall, slower).")
    recall_sample: int = Field(1000, ge=1, description="Queries on which the approximate index's recall@k "
                                                       "against exact search is measured.")
    topics: int = Field(3, ge=0, description="Shared topics kept per pair (the most alike attribute pairs).")
    topic_floor: float = Field(0.45, ge=-1.0, le=1.0, description="Least attribute similarity for a shared topic.")
    seed: int = Field(0, description="Seed for the random strategy and the recall sample.")
    batch_size: int = Field(64, ge=1, description="Texts per embedding batch.")
    threads: int | None = Field(None, ge=1, description="torch and FAISS threads; default: the usable cores.")

    @model_validator(mode="after")
    def _band_is_ordered(self) -> "PairConfig":
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is above high ({self.high}); the band is [low, high]")
        return self

    def identity(self) -> dict[str, Any]:
        """What decides the pairs, for config hashes: not the input path (hashed apart), threads or batches."""
        return self.model_dump(mode="json", exclude={"profiles", "threads", "batch_size", "recall_sample"})


class PersonasConfig(Section):
    """`forge personas`: expand seed attributes with the chat backend, then build NLI-consistent profiles."""

    seeds: Path | None = Field(None, description="Seed attributes: text (one a line), JSONL (strings, or objects "
                                                 "with `column`), CSV (with `column`) or a Synthetic-Persona-Chat "
                                                 "JSONL(.gz); default corpora/personas/seed_attributes.txt.")
    column: str = Field("text", description="The CSV column or JSONL key that holds the attribute.")
    max_seeds: int = Field(0, ge=0, description="Sample this many seed attributes (seeded); 0 takes them all.")
    expand: bool = Field(True, description="Ask the chat backend for new attributes; off: profiles from the seeds.")
    model: str = Field("packaged:minilm-l6", description="Sentence-embedding model for topics, duplicates and "
                                                         "the diversity measures.")
    topics: int = Field(50, ge=1, description="Topics: k-means clusters of the seed embeddings (FAISS, seeded).")
    question_examples: int = Field(6, ge=1, description="Seeds nearest a topic's centre shown when asking which "
                                                        "questions the topic answers.")
    questions_per_topic: int = Field(3, ge=1, description="Questions induced per topic.")
    requests_per_question: int = Field(2, ge=1, description="Expansion requests per (topic, question), each with "
                                                            "other few-shot examples.")
    per_request: int = Field(5, ge=1, description="New attributes asked for in one request.")
    examples: int = Field(4, ge=1, le=10, description="Seed examples per expansion request (3-5 suit small models).")
    questions_temperature: float | None = Field(0.2, ge=0.0, le=2.0, description="Sampling temperature when "
                                                "inducing questions (analysis, not invention: low); null: the backend's.")
    temperature: float | None = Field(0.5, ge=0.0, le=2.0, description="Sampling temperature of expansion requests; "
                                      "null: the backend's. SmolLM2-135M gave about 3x more usable lines at 0.5 than 0.8.")
    max_tokens: int = Field(96, ge=8, description="Most new tokens per reply.")
    max_words: int = Field(20, ge=3, description="Longest expanded attribute kept, in words.")
    near_duplicate: float = Field(0.9, ge=0.0, le=1.0, description="Drop a new attribute whose embedding cosine "
                                                                   "similarity to anything seen is at least this.")
    cluster_similarity: float = Field(0.6, ge=0.0, le=1.0, description="Leader-clustering threshold of the "
                                                                       "diversity measures (number of clusters).")
    n: int = Field(1000, ge=1, description="Profiles to build (not in the config hash: a re-run with a larger n "
                                           "continues the same profiles).")
    k: int = Field(5, ge=1, description="Attributes per profile.")
    contradiction: float = Field(0.5, gt=0.0, lt=1.0, description="Reject a candidate whose contradiction "
                                                                  "probability against an attribute already in the "
                                                                  "profile, in either direction, is above this.")
    entailment: float = Field(0.6, gt=0.0, lt=1.0, description="Reject a candidate as redundant when an attribute "
                                                               "in the profile entails it, or it entails one, with "
                                                               "probability above this.")
    max_candidates: int = Field(60, ge=1, description="Candidates tried for one profile before it is given up "
                                                      "(logged as incomplete).")
    baseline: int = Field(1000, ge=0, description="Random profiles (same size, same pool) judged for the "
                                                  "comparison contradiction rate; 0 skips it.")
    seed: int = Field(0, description="Seed for sampling seeds, topics, examples and profiles.")
    batch_size: int = Field(64, ge=1, description="Texts per embedding batch.")
    threads: int | None = Field(None, ge=1, description="torch and FAISS threads; default: the usable cores.")

    def identity(self) -> dict[str, Any]:
        """What decides the outputs, for config hashes: not the seed path (its content is hashed apart),
        n (profile i depends only on the pool, seed and i), the baseline size, threads or batches."""
        return self.model_dump(mode="json", exclude={"seeds", "n", "baseline", "threads", "batch_size"})


class CriticWeights(Section):
    faithfulness: float = Field(0.35, ge=0, description="Weight of 1 - the worst utterance's contradiction probability.")
    coverage: float = Field(0.15, ge=0, description="Weight of the share of persona sentences a speaker expresses.")
    quality: float = Field(0.3, ge=0, description="Weight of the LLM judge's rubric (mean of four 1-5 scores, scaled to 0-1).")
    form: float = Field(0.2, ge=0, description="Weight of form: length, alternation, distinct bigrams, no repeated turns.")


class CriticConfig(Section):
    """The critic's experts, their weights and the hard filters (`generate.critic`)."""

    judge: bool = Field(True, description="Ask the chat backend's LLM judge for the quality rubric and the safety "
                                          "question (one request per candidate); off: quality is left out.")
    judge_max_tokens: int = Field(256, ge=16, description="Most tokens of the judge's JSON answer.")
    # 0.8, measured with the embedded NLI (session 2's build): on the first 8 turns of 200
    # Synthetic-Persona-Chat test conversations (faithful by construction, bar a few), 21% are
    # flagged at 0.5, 13.5% at 0.8, 10% at 0.9; contradiction recall on the hand-written persona
    # test set is 0.900, 0.875, 0.812. With the current build: 13.5% flagged at 0.8, 11.5% rejected
    # once alarms the persona explains are set aside (bench/nli_chat.py).
    contradiction: float = Field(0.8, gt=0, lt=1, description="An utterance contradicts its speaker's persona when "
                                 "its contradiction probability against one of their sentences is above this.")
    max_contradicted: int = Field(0, ge=0, description="Hard filter: reject a candidate with more contradicting "
                                  "utterances than this.")
    entailment: float = Field(0.5, gt=0, lt=1, description="A persona sentence is covered when an utterance of its "
                              "speaker entails it with more than this probability.")
    # On: measured in session 7 (replyscore.confirm_by_sentence) the rejected share of two draws of
    # 200 SPC train conversations fell from 0.20 to 0.135 and from 0.26 to 0.22, at no cost in
    # rule-made contradictions caught.
    by_sentence: bool = Field(True, description="Confirm an alarm on an utterance of several sentences sentence by "
                              "sentence: it counts only when one of them contradicts the persona sentence too.")
    # The prefilter stays off: at 0.3 it cut those rejections further (to 0.095) but lost 10 of 50
    # contradictions on the persona dev set (recall 0.88 -> 0.68; 0.78 at 0.2): real contradictions
    # can embed far apart ("I am a vegetarian." / "steak night!").
    prefilter: float = Field(0.0, ge=-1, le=1, description="Skip the NLI for (sentence, utterance) pairs whose "
                             "embedding cosine is below this (counted neutral); 0 checks every pair.")
    weights: CriticWeights = Field(default_factory=CriticWeights)
    min_margin: float = Field(0.05, ge=0, description="Least score gap between chosen and rejected for a DPO pair.")
    blocklist: Path | None = Field(None, description="Extra safety patterns (one per line, * as a wildcard) on top "
                                                     "of corpora/safety/blocklist.txt.")


class GenerateConfig(Section):
    """`forge generate`: the paper's Generator-Critic loop over the pairs."""

    pairs: Path | None = Field(None, description="Pair JSONL (default <run_dir>/pairs.jsonl).")
    profiles: Path | None = Field(None, description="Profile JSONL the pairs refer to (default "
                                                    "<run_dir>/profiles.jsonl).")
    mode: Literal["auto", "whole", "turns"] = Field(
        "auto", description="whole: one request writes the conversation (the paper; strong models); turns: two "
                            "persona agents reply in turn (small models); auto: turns for the local backend.")
    candidates: int = Field(3, ge=1, description="Candidate conversations per pair; the critic picks the best.")
    rounds: int = Field(2, ge=1, description="Rounds: the pairs are split over them, and each round's best "
                                             "conversations are the next round's few-shot examples.")
    examples: int = Field(2, ge=0, description="Few-shot example conversations per request (whole mode; turns "
                                               "mode shows at most one, cut to `example_turns`).")
    example_turns: int = Field(6, ge=2, description="Turns of the example shown to a persona agent (turns mode).")
    example_pool: int = Field(8, ge=1, description="A round's top conversations the next round draws examples from.")
    min_turns: int = Field(8, ge=2, description="Fewest turns a conversation may have (fewer is rejected).")
    max_turns: int = Field(16, ge=2, description="Most turns asked for (whole) / generated (turns).")
    turns: int | None = Field(None, ge=2, description="turns mode: exactly this many turns (default: drawn "
                                                      "between min_turns and max_turns per candidate).")
    turn_max_tokens: int = Field(48, ge=8, description="Most tokens per reply (turns mode).")
    turn_candidates: int = Field(1, ge=1, description="turns mode: replies sampled per turn; the one kept does "
                                 "not contradict its speaker's persona (NLI, critic.contradiction), is grounded "
                                 "in it (highest entailment of one of its sentences) and is well formed. 1: the "
                                 "first reply, no selection.")
    turn_max_words: int = Field(40, ge=1, description="turns mode with turn_candidates > 1: a reply of more words "
                                                      "than this is not preferred (form).")
    generator: Path | None = Field(None, description="A generator adapter from `forge train --method generator` "
                                   "(its train/<name>/ folder or adapter/) that generate applies to the local "
                                   "model instead of backend.adapter; its hash goes into the config and manifest.")
    max_tokens: int = Field(1200, ge=64, description="Most tokens per conversation (whole mode).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature; null: the backend's.")
    limit: int = Field(0, ge=0, description="Use only the first N pairs; 0 uses all (a larger N later extends "
                                            "the run).")
    chunk_pairs: int = Field(32, ge=1, description="Pairs generated and scored together before their results "
                                                   "are written (the unit of resumption).")
    seed: int = Field(0, description="Seed for examples, lengths and sampling.")
    critic: CriticConfig = Field(default_factory=CriticConfig)

    @model_validator(mode="after")
    def _turns_ordered(self) -> "GenerateConfig":
        if self.min_turns > self.max_turns:
            raise ValueError(f"min_turns ({self.min_turns}) is above max_turns ({self.max_turns})")
        return self

    def identity(self) -> dict[str, Any]:
        """What decides the outputs: not the chunking (only how often results are written) or the limit.
        The generator adapter counts through the backend's identity (its weights' hash, not its path);
        turn selection's settings only when it is on (a run from before it existed keeps its hash)."""
        skip = {"chunk_pairs", "limit", "pairs", "profiles", "generator"}
        if self.turn_candidates == 1:
            skip |= {"turn_candidates", "turn_max_words"}
        return self.model_dump(mode="json", exclude=skip)
class EvalConfig(Section):
    """`forge eval`: the study's next-reply protocol on held-out conversations, base model vs adapters."""

    data: Path | None = Field(None, description="Conversations (Synthetic-Persona-Chat JSONL(.gz) shape: user1_persona, "
                                                "user2_persona, turns); default corpora/spc/test.jsonl.gz.")
    limit: int = Field(0, ge=0, description="Evaluate the first N usable conversations; 0: all (not in the config "
                                            "hash: a larger limit continues the same run).")
    position: int = Field(7, ge=1, description="0-based index of the reference reply (7: the 8th turn).")
    context: int = Field(6, ge=0, description="Turns before the prompt turn given as context.")
    adapters: dict[str, Path] = Field(default_factory=dict, description="LoRA adapters to compare with the base "
                                      "model, NAME: folder (forge eval --adapter NAME=DIR adds to these).")
    sample: bool = Field(False, description="Sample replies (temperature, top_p) instead of greedy decoding "
                                            "(greedy is deterministic and comparable across models).")
    temperature: float = Field(0.7, gt=0.0, le=2.0, description="Sampling temperature when sample is on.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus mass when sample is on.")
    max_new_tokens: int = Field(64, ge=1, description="Most new tokens per generated reply.")
    batch_size: int = Field(32, ge=1, description="Prompts generated (and references scored) together; at most "
                                                  "eval.chunk counts (32 decodes 2.9x faster than 8 on 2 cores).")
    chunk: int = Field(32, ge=1, description="Examples generated, scored and written per step (a killed run "
                                             "loses at most one chunk).")
    contradiction: float = Field(0.5, gt=0.0, lt=1.0, description="A reply contradicts its persona when its largest "
                                 "contradiction probability against an attribute is above this.")
    bertscore_layer: int = Field(6, ge=1, le=6, description="Layer of all-MiniLM-L6-v2 used by BERTScore (6: the "
                                                            "last, the one trained for sentence similarity).")
    bootstrap: int = Field(1000, ge=10, description="Bootstrap resamples for the 95% intervals.")
    confidence: float = Field(0.95, gt=0.5, lt=1.0, description="Coverage of the bootstrap intervals.")
    seed: int = Field(0, description="Seed of the bootstrap resamples and of sampled replies.")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the usable cores.")
    hits_candidates: int = Field(0, ge=0, description="Hits@1 of K (ConvAI2: 20): the reference among K-1 replies "
                                 "drawn (seeded) from other conversations, ranked by the model's summed "
                                 "log-likelihood given the prompt (scored on the prompt's cached pass), local models "
                                 "only. 0: off.")

    retrieval: Path | None = Field(None, description="Also evaluate the retrieval baseline (the study's IR row): "
                                   "each reply is the training reply, from this SPC-shaped corpus (e.g. "
                                   "corpora/spc/train.jsonl.gz), whose prompt turn is nearest by sentence embedding "
                                   "(never from the example's own conversation); reported as the model 'retrieval'.")
    retrieval_encoder: str = Field("packaged:minilm-l6", description="Sentence encoder of the retrieval baseline.")

    @field_validator("hits_candidates")
    @classmethod
    def _hits_candidates(cls, value: int) -> int:
        if value == 1:
            raise ValueError("1 candidate ranks the reference against nothing; use 0 (off) or at least 2 (20 for "
                             "ConvAI2's Hits@1 of 20)")
        return value

    def identity(self) -> dict[str, Any]:
        """What decides each record, for config hashes: not the data path (hashed apart), the limit, the
        adapters or the retrieval corpus (each generation record carries its model's digest), threads,
        batches or chunks; Hits@1 only when on (runs made before it existed keep their hash)."""
        out = self.model_dump(mode="json", exclude={"data", "limit", "adapters", "threads", "batch_size",
                                                    "chunk", "retrieval", "retrieval_encoder"})
        if not self.hits_candidates:
            out.pop("hits_candidates")
        return out


class JudgeConfig(Section):
    """`forge judge`: LLM-as-judge rubric and pairwise comparisons of eval's replies, and Big Five probes."""

    input: Path | None = Field(None, description="Generations to judge (default <run_dir>/eval/generations.jsonl).")
    backend: BackendConfig | None = Field(None, description="The judge's own backend; default: the recipe's backend "
                                                            "(without its adapter).")
    limit: int = Field(0, ge=0, description="Judge the first N examples; 0: all.")
    rubric: bool = Field(True, description="Score each reply on the rubric (prompts/judge/rubric.j2).")
    pairwise: bool = Field(True, description="Compare the base model with each adapter, in both orders.")
    bigfive: bool = Field(True, description="Ask each model under test the Big Five items, in persona.")
    items: Path | None = Field(None, description="Big Five items JSONL (default corpora/bigfive/ipip_items.jsonl).")
    personas: int = Field(5, ge=1, description="Personas (the first examples' replying personas) answering the "
                                               "Big Five items.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Judge sampling temperature (0: greedy).")
    max_tokens: int = Field(320, ge=16, description="Most tokens of a judge reply.")
    probe_max_tokens: int = Field(24, ge=4, description="Most tokens of a Big Five answer.")
    seed: int = Field(0, description="Seed of the judge requests.")
    scoring: Literal["auto", "logprobs", "text"] = Field(
        "auto", description="logprobs: one criterion at a time, the score is the expectation over the answer "
                            "tokens 1-5 (pairwise: P(A) vs P(B); Big Five the same); text: a JSON answer read "
                            "from the reply; auto: logprobs where the backend gives token probabilities (local, "
                            "openai), else text.")
    cache: bool = Field(True, description="Answer repeated judge questions from the judge cache "
                                          "(<cache>/judge/answers.sqlite) instead of asking again.")
    cache_path: Path | None = Field(None, description="Another judge cache file (sqlite).")
    nli_agreement: bool = Field(False, description="Also run the NLI on every judged reply against its persona "
                                                   "and report how the judge's persona consistency agrees with it.")

    def identity(self) -> dict[str, Any]:
        ident = self.model_dump(mode="json", exclude={"input", "items", "limit", "backend", "cache", "cache_path",
                                                      "nli_agreement"})
        ident["backend"] = self.backend.identity() if self.backend else None
        return ident
class CurateConfig(Section):
    """`forge curate`: training samples from conversations, cleaned, n chosen for quality and diversity."""

    data: Path | None = Field(None, description="A Synthetic-Persona-Chat-shaped JSONL(.gz) (user1_persona, "
                                                "user2_persona, turns) instead of <run_dir>/best.jsonl; it has no "
                                                "critic scores, so no quality floor applies.")
    preferences: Path | None = Field(None, description="Preference JSONL for the DPO export (default "
                                                       "<run_dir>/preferences.jsonl when it exists).")
    n: int = Field(200, ge=1, description="Samples to choose.")
    kind: Literal["next_reply", "conversation"] = Field(
        "next_reply", description="next_reply: persona system prompt, earlier turns, the other user's turn, the "
                                  "reply as target (the study's format); conversation: a whole conversation "
                                  "played from one persona's side.")
    positions: Literal["study", "all"] = Field(
        "study", description="next_reply: study: one sample per conversation, the reply at `position`; all: "
                             "every reply of both speakers (more, correlated samples).")
    position: int = Field(7, ge=1, description="next_reply, study: the 0-based turn to predict (7: the 8th turn, "
                                              "after 6 turns of context and the other user's turn).")
    context: int = Field(6, ge=0, description="next_reply: earlier turns kept before the other user's turn.")
    strategy: Literal["kcenter", "facility", "random"] = Field(
        "kcenter", description="kcenter: greedy farthest-first; facility: greedy facility location (lazy, on a "
                               "sampled ground set); random: the baseline.")
    quality_weight: float = Field(0.3, ge=0.0, le=1.0, description="How much the critic's score counts in "
                                                                   "selection: each candidate's gain is multiplied by "
                                                                   "(1 - w) + w * quality (unscored: 0.5).")
    density_weight: float = Field(0.7, ge=0.0, le=1.0, description="kcenter: multiply each candidate's distance "
                                                                   "by (1 - d) + d * density (how typical it is): plain "
                                                                   "farthest-first (0) chases outliers and covered the "
                                                                   "average SPC sample worse than random (docs/curate.md).")
    quality: str | None = Field(None, description="FILE:FIELD: each sample's quality for selection from a forge "
                                "score file's signal (e.g. runs/scores/train.scores.jsonl:max_entailment; -FIELD: "
                                "lower is better, e.g. :-perplexity), as its percentile rank in the pool (0-1); "
                                "samples the file does not score count as neutral. Replaces the critic score in "
                                "selection (after the min_quality floor, which stays on the critic score).")
    min_quality: float | None = Field(0.5, ge=0.0, le=1.0, description="Drop samples whose critic score is below "
                                                                       "this (unscored samples are kept); null: no floor.")
    dedup_threshold: float = Field(0.95, ge=0.0, le=1.0, description="Near-duplicates: cosine similarity of the "
                                                                     "sample embeddings at or above this (FAISS range "
                                                                     "search); the better-scored one is kept.")
    model: str = Field("packaged:minilm-l6", description="Sentence-embedding model for duplicates and selection.")
    clusters: int = Field(0, ge=0, description="k-means clusters of the pool for the 'clusters covered' figure; "
                                               "0: as many as samples chosen.")
    facility_ground: int = Field(2048, ge=16, description="facility: pool samples (seeded) whose nearest chosen "
                                                          "sample the objective sums over.")
    heldout: int = Field(0, ge=0, description="Also export this many held-out samples (random, from conversations "
                                              "none of the chosen samples come from) as the `heldout` split.")
    dpo_min_margin: float = Field(0.05, ge=0.0, le=1.0, description="DPO: keep a preference only if the chosen "
                                                                    "conversation's score beats the rejected one's by "
                                                                    "at least this.")
    max_tokens: int = Field(2048, ge=16, description="Drop rows longer than this in the target model's tokens "
                                                     "(after its chat template).")
    licence: str = Field("cc-by-4.0", description="The dataset card's licence (personas derive from "
                                                  "Synthetic-Persona-Chat, CC-BY 4.0).")
    seed: int = Field(0, description="Seed for random selection, the ground set, k-means and the held-out split.")
    batch_size: int = Field(64, ge=1, description="Texts per embedding batch.")
    threads: int | None = Field(None, ge=1, description="torch and FAISS threads; default: the usable cores.")

    def identity(self) -> dict[str, Any]:
        """What decides the outputs, for config hashes: not the input paths (hashed apart), threads or batches."""
        out = self.model_dump(mode="json", exclude={"data", "preferences", "threads", "batch_size", "quality"})
        if self.quality:   # the field decides; the file is hashed as an input
            out["quality"] = self.quality.rpartition(":")[2]
        return out
DEFAULT_STYLES: dict[str, str] = {
    "warm": "warm and encouraging: kind, supportive, celebrates the other person and reassures them",
    "witty": "dry and witty: deadpan humour, understatement and a wry twist, never cruel",
    "direct": "direct and no-nonsense: short, plain, practical; says what to do, no padding",
    "socratic": "curious and socratic: answers with a thoughtful question that helps the other person reflect",
    "calm": "calm and grounding: slow, soothing and steady; invites a breath and takes the pressure off",
}


class RestyleChecks(Section):
    """What a rewrite must pass to be kept: the content kept (NLI both ways, the speaker's persona
    facts, encoder similarity) and the style carried (the style classifier)."""

    contradiction: float = Field(0.8, gt=0.0, lt=1.0, description="Reject a rewrite when the NLI's contradiction "
                                 "probability between original and rewrite, in either direction, is above this "
                                 "(0.8 as the critic: the embedded NLI over-calls contradiction on chat, issue #16).")
    entailment: float = Field(0.5, gt=0.0, lt=1.0, description="A persona fact is stated by a line when the NLI's "
                              "entailment probability (fact as premise, line as hypothesis) is above this; a fact the "
                              "original states must still be stated by the rewrite.")
    similarity: float = Field(0.5, ge=-1.0, le=1.0, description="Reject a rewrite whose sentence-embedding cosine "
                              "similarity to the original is below this (the content drifted away).")
    style_probability: float = Field(0.0, ge=0.0, le=1.0, description="The style classifier must pick the target "
                                     "style, with at least this probability (0: its top choice is enough).")


class RestyleConfig(Section):
    """`forge restyle`: rewrite the replies of source conversations into several voices, checked."""

    data: Path | None = Field(None, description="Source conversations: Dialogue records or any "
                              "Synthetic-Persona-Chat-shaped JSONL(.gz) (default <run_dir>/best.jsonl).")
    n: int = Field(0, ge=0, description="Restyle the first N conversations; 0: all (a larger N later "
                                        "extends the run).")
    descriptions: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_STYLES), description="Every known "
                                         "style: name -> the voice described in words (shown in the prompt).")
    styles: list[str] = Field(default_factory=lambda: list(DEFAULT_STYLES), description="The styles to rewrite "
                              "into, each one of `descriptions` with lines in the corpus.")
    corpus: Path | None = Field(None, description="Style corpus JSONL ({style, text} a line; default "
                                "corpora/styles/styles.jsonl): few-shot examples and the classifier's data.")
    speaker: Literal["both", "user1", "user2"] = Field("both", description="Whose replies are rewritten.")
    examples: int = Field(3, ge=0, le=10, description="Few-shot examples of the style per request, drawn "
                          "(seeded) from the corpus.")
    max_tokens: int = Field(64, ge=8, description="Most tokens of one rewritten reply.")
    temperature: float | None = Field(0.7, ge=0.0, le=2.0, description="Sampling temperature; null: the backend's.")
    chunk: int = Field(64, ge=1, description="Replies rewritten, checked and written together (a killed run loses "
                       "at most one chunk's requests).")
    heldout: float = Field(0.2, gt=0.0, lt=1.0, description="Share of each style's corpus lines held out to "
                           "measure the style classifier's accuracy (seeded, stratified).")
    classifier_c: float = Field(4.0, gt=0.0, description="Inverse regularisation of the classifier's "
                                "logistic-regression head.")
    model: str = Field("packaged:minilm-l6", description="Sentence-embedding model for the similarity check "
                       "and the style classifier.")
    checks: RestyleChecks = Field(default_factory=RestyleChecks)
    seed: int = Field(0, description="Seed for few-shot examples, sampling and the held-out split.")
    batch_size: int = Field(64, ge=1, description="Texts per embedding batch.")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the usable cores.")

    @field_validator("styles")
    @classmethod
    def _styles_are_described(cls, styles: list[str], info: ValidationInfo) -> list[str]:
        known = info.data.get("descriptions") or {}
        if not styles:
            raise ValueError("no style named; name at least one, e.g. warm")
        for name in styles:
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ValueError(f"unknown style {name!r}; {hint}known: {', '.join(known)} "
                                 f"(describe a new one under restyle.descriptions)")
        if len(set(styles)) != len(styles):
            raise ValueError("a style is named twice")
        return styles

    def identity(self) -> dict[str, Any]:
        """What decides the outputs, for config hashes: not the input path (hashed apart), n (a larger n
        extends the run), chunks, threads or batches."""
        return self.model_dump(mode="json", exclude={"data", "corpus", "n", "chunk", "threads", "batch_size"})


class LoraSettings(Section):
    """The LoRA adapter `forge train` fits (peft.LoraConfig)."""

    r: int = Field(8, ge=1, description="Rank of the low-rank update.")
    alpha: int = Field(16, ge=1, description="Scaling numerator: the update is scaled by alpha / r.")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"],
                                      description="Module names the adapter wraps (llama: q_proj, k_proj, v_proj, "
                                                  "o_proj, gate_proj, up_proj, down_proj).")


class OpenAITrainSettings(Section):
    """`forge train --backend openai`: a hosted fine-tuning job."""

    poll_s: float = Field(15.0, gt=0, description="Seconds between status polls of the job.")
    suffix: str | None = Field(None, max_length=64, description="Suffix of the fine-tuned model's name.")
    n_epochs: int | None = Field(None, ge=1, description="Epochs; null lets the service choose (it usually picks 3).")
    timeout_s: float = Field(86_400.0, gt=0, description="Stop polling after this many seconds (re-run to poll on).")


class RewardSettings(Section):
    """`forge train --method reward`: a reward model (a one-output classification head on the base, LoRA)
    fitted to preference pairs with trl's RewardTrainer."""

    heldout: float = Field(0.2, ge=0.0, lt=1.0, description="Share of the pairs (split by pair_id, seeded by "
                                                             "train.seed) held out to measure ranking accuracy.")


class RLSettings(Section):
    """`forge train --method rloo`: RL (trl's RLOOTrainer) from an SFT adapter against the reward model,
    NLI faithfulness and a length penalty, with a KL leash to the start and alarms on reward hacking."""

    reward_model: Path | None = Field(None, description="Folder of a reward model from --method reward (its "
                                                        "train/<name>/ folder or adapter/); default "
                                                        "<run_dir>/train/reward.")
    prompts: Path | None = Field(None, description="Conversations to draw prompts from (Synthetic-Persona-Chat "
                                                   "shape: user1_persona, user2_persona, turns); default "
                                                   "corpora/spc/train.jsonl.gz. Never the evaluation split.")
    n_prompts: int = Field(64, ge=1, description="Prompts to draw (one per conversation).")
    position: int = Field(7, ge=1, description="The turn the policy answers (0-based), as curate's samples.")
    context: int = Field(6, ge=0, description="Earlier turns in the prompt.")
    beta: float = Field(0.05, ge=0.0, description="KL coefficient to the reference (the start adapter); 0 drops "
                                                  "the leash (KL is still measured and logged).")
    num_generations: int = Field(4, ge=2, description="Replies sampled per prompt (RLOO's leave-one-out group).")
    max_completion_length: int = Field(48, ge=4, description="Most new tokens per reply.")
    temperature: float = Field(0.9, gt=0.0, description="Sampling temperature of the replies.")
    rm_weight: float = Field(1.0, description="Weight of the reward model's score.")
    nli_weight: float = Field(1.0, description="Weight of NLI faithfulness: max entailment minus max "
                                               "contradiction over the persona's sentences (0: no NLI in the "
                                               "reward; the rates are still watched).")
    length_penalty: float = Field(0.02, description="Subtracted per word beyond length_free (a negative value "
                                                    "pays for length: a reward made to be hacked, for tests "
                                                    "and the beta sweep).")
    length_free: int = Field(25, ge=0, description="Words a reply may have before the length penalty starts.")
    grounded_at: float = Field(0.5, gt=0.0, lt=1.0, description="A reply is grounded when some persona "
                                                               "sentence entails it with at least this "
                                                               "probability, contradicts at this.")
    samples_per_checkpoint: int = Field(8, ge=0, description="Replies saved to samples.jsonl at each checkpoint.")
    alarm_window: int = Field(3, ge=1, description="Logged steps averaged at the start and at the end when "
                                                   "comparing for the alarms.")
    alarm_grounding_drop: float = Field(0.1, ge=0.0, description="Alarm when reward rises while the grounding "
                                                                 "rate falls by more than this (absolute).")
    alarm_contradiction_rise: float = Field(0.1, ge=0.0, description="Alarm when reward rises while the "
                                                                     "contradiction rate rises by more than this.")
    alarm_length_drift: float = Field(0.5, ge=0.0, description="Alarm when reward rises while the mean reply "
                                                               "length moves by more than this share.")


class GeneratorTrainSettings(Section):
    """`forge train --method generator`: which turns of the seed conversations become training rows, shown
    as generate's `turns` mode asks for a reply (see persona_forge/stages/train_generator.py)."""

    samples: int = Field(600, ge=0, description="Turns drawn at random (seeded by train.seed) from the whole "
                                                "file; 0: every usable turn.")
    max_turns: int = Field(16, ge=1, description="Only turns before this position (generate.max_turns: the "
                                                 "agents never see longer conversations).")
    example_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of rows that show another conversation "
                                 "as the example, as generate does when generate.examples > 0.")
    example_turns: int = Field(6, ge=2, description="Turns of that example (generate.example_turns).")


class TrainConfig(Section):
    """`forge train`: LoRA SFT or DPO of the chat model on curated samples (trl + peft)."""

    method: Literal["sft", "dpo", "reward", "rloo", "grpo", "generator"] = Field(
        "sft", description="sft: supervised next replies; dpo: preference pairs; reward: a reward model from "
                           "preference pairs; rloo (or grpo): RL against the reward model with a KL leash; "
                           "generator: generate's persona agent from seed conversations (SFT on the requests "
                           "turns mode sends; data default: the packaged Synthetic-Persona-Chat train split).")
    data: Path | None = Field(None, description="Training JSONL; default <run_dir>/curated/sft.jsonl (sft), "
                                                "dpo.jsonl (dpo) or openai.jsonl (--backend openai).")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                             description="Output folder <run_dir>/train/<name>; default the method's name.")
    model: str | None = Field(None, description="Base model (packaged:NAME, a folder, a hub name); default "
                                                "backend.model.")
    adapter: Path | None = Field(None, description="Start from this LoRA adapter (e.g. DPO after SFT) instead of "
                                                   "a fresh one.")
    epochs: float = Field(3.0, gt=0, description="Passes over the data.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: run all the epochs).")
    batch_size: int = Field(2, ge=1, description="Samples per device step.")
    grad_accum: int = Field(1, ge=1, description="Device steps per optimizer step.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (LoRA wants about 10x a full fine-tune's).")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Share of the steps spent warming up.")
    max_length: int = Field(384, ge=16, description="Most tokens per sample; the oldest context turns are dropped "
                                                    "to fit, never the persona or the target.")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    beta: float = Field(0.1, gt=0, description="DPO: how far the policy may move from the reference.")
    quantize: Literal["auto", "4bit", "none"] = Field(
        "auto", description="auto: 4-bit QLoRA (bitsandbytes) where CUDA is present, else a plain LoRA; "
                            "4bit: ask for it (without CUDA: a message, then a plain LoRA); none: never.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16: the frozen base model's weights in bfloat16 (the LoRA weights stay float32; "
                            "autocast too on CUDA); auto: bf16 on CUDA and on CPUs with AMX / AVX512-BF16 (1.37x "
                            "faster per step here), float32 elsewhere.")
    checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="Activation checkpointing (recompute activations in the backward pass to save "
                            "memory); auto: on with CUDA, off on CPU, where it cost 27% of every step.")
    seed: int = Field(0, description="Seed for the adapter's initialisation and the data order.")
    logging_steps: int = Field(5, ge=1, description="Log the loss every this many steps.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every this many steps (a killed run resumes there).")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the usable cores.")
    openai: OpenAITrainSettings = Field(default_factory=OpenAITrainSettings)
    reward: RewardSettings = Field(default_factory=RewardSettings)
    rl: RLSettings = Field(default_factory=RLSettings)
    generator: GeneratorTrainSettings = Field(default_factory=GeneratorTrainSettings)

    def identity(self) -> dict[str, Any]:
        """What decides the adapter, for config hashes: not logging, checkpoint spacing or threads
        (the data's and a start adapter's contents are hashed apart)."""
        # reward / rl only count for their own methods (an SFT run's hash stays what it was).
        skip = {"logging_steps", "save_steps", "threads", "openai", "adapter", "reward", "rl", "generator"}
        ident = self.model_dump(mode="json", exclude=skip)
        if self.adapter is not None:
            ident["adapter"] = _adapter_digest(self.adapter)
        if self.method == "reward":
            ident["reward"] = self.reward.model_dump(mode="json")
        if self.method == "generator":
            ident["generator"] = self.generator.model_dump(mode="json")
        if self.method in ("rloo", "grpo"):
            ident["rl"] = self.rl.model_dump(mode="json", exclude={"samples_per_checkpoint", "alarm_window",
                                                                  "alarm_grounding_drop", "alarm_contradiction_rise",
                                                                  "alarm_length_drift"})
            if self.rl.reward_model is not None:
                ident["rl"]["reward_model"] = _adapter_digest(_rm_adapter(self.rl.reward_model))
        return ident


class AnnotateConfig(Section):
    """`forge view` / `forge annotate`: what people are asked when they judge a run by hand."""

    traits: list[str] = Field(default_factory=lambda: ["warmth", "humour", "coherence", "helpfulness"],
                              min_length=1, description="Traits rated on the Likert scale (likert task).")
    scale_min: int = Field(1, description="Lowest point of the Likert scale.")
    scale_max: int = Field(5, description="Highest point of the Likert scale.")
    tags: list[str] = Field(default_factory=lambda: ["playful", "empathetic", "performing empathy", "formal",
                                                     "curious", "off-persona"],
                            min_length=1, description="Tags offered in the tags task (any number may apply).")
    pairwise_question: str = Field("Which conversation sounds more like these two people?",
                                   description="The question above a pairwise item.")
    seed: int = Field(0, description="Seed of the queue order and of each item's A/B swap.")
    max_items: int = Field(500, ge=1, description="Most items in one task's queue.")
    page_size: int = Field(20, ge=1, le=200, description="Records per page in forge view.")

    @model_validator(mode="after")
    def _scale_is_ordered(self) -> "AnnotateConfig":
        if self.scale_max <= self.scale_min:
            raise ValueError(f"scale_max ({self.scale_max}) must be above scale_min ({self.scale_min})")
        if len(set(self.tags)) != len(self.tags) or len(set(self.traits)) != len(self.traits):
            raise ValueError("traits and tags must not repeat")
        return self

class ServeConfig(Section):
    """`forge serve`: one base model, many LoRA adapters, one OpenAI-compatible endpoint."""

    model: str | None = Field(None, description="Base model (packaged:NAME, a folder, a hub name); default "
                                                "backend.model when the backend is local, else the packaged "
                                                "SmolLM2.")
    served_model_name: str | None = Field(None, description="The base model's name in requests and /v1/models; "
                                                            "default the model spec as given.")
    adapters: dict[str, Path] = Field(default_factory=dict, description="Adapters served from the start: "
                                                                        "NAME: folder.")
    adapters_dir: Path | None = Field(None, description="Also serve every adapter under this folder (a folder with "
                                                        "adapter_config.json, named after it; forge train's "
                                                        "<name>/adapter/ is named <name>).")
    host: str = Field("127.0.0.1", description="Address to bind; anything but loopback needs an API key.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    api_key_env: str = Field("FORGE_SERVE_API_KEY", description="Environment variable holding the API key "
                                                                 "(required off loopback; checked whenever set).")
    engine: Literal["local", "vllm"] = Field("local", description="local: transformers + peft here; vllm: start "
                                                                   "`vllm serve` with the same adapters (or print the "
                                                                   "command where vLLM is not installed).")
    max_loaded: int = Field(8, ge=1, description="Adapters resident at once; past it the least recently used is "
                                                 "unloaded (and reloaded when asked for).")
    max_rank: int = Field(64, ge=1, description="Largest LoRA rank accepted at load.")
    max_batch: int = Field(16, ge=1, description="Requests generated together in one batch.")
    batch_wait_ms: float = Field(50.0, ge=0, description="How long the batcher waits for more requests before "
                                                         "starting a batch.")
    max_queue: int = Field(64, ge=1, description="Requests waiting beyond the running batch; past it the server "
                                                 "answers 429 with Retry-After.")
    batching: Literal["mixed", "per_adapter"] = Field(
        "mixed", description="mixed: requests for different adapters share a batch; per_adapter: one adapter per "
                             "batch, swapped between batches (the baseline).")
    lora_kernel: Literal["peft", "bmm"] = Field(
        "bmm", description="How a mixed batch applies its adapters: bmm: each row's LoRA weights gathered from "
                           "every loaded adapter's, stacked, two batched matmuls per layer (fewer, larger "
                           "operations; plain LoRA on linear layers, else peft's path); peft: peft's "
                           "adapter_names (a loop over the batch's adapters in every layer).")
    max_tokens: int = Field(256, ge=1, description="New tokens when a request gives no max_tokens.")
    repetition_penalty: float | None = Field(None, ge=1.0, description="Applied when a request gives none; "
                                                                        "default backend.repetition_penalty, so "
                                                                        "replies match the local backend's.")
    base_aliases: list[str] = Field(default_factory=list, description="Other names adapters may declare as their "
                                                                      "base model (adapter_config.json).")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the usable cores.")

class MemoryConfig(Section):
    """User memory (`forge chat --user ID`, `forge memory`): facts a user states, kept per user."""

    dir: Path | None = Field(None, description="Where each user's facts live (<dir>/<user>.jsonl); default "
                                               "$XDG_DATA_HOME/persona_forge/memory (~/.local/share/...).")
    mode: Literal["off", "block", "retrieve"] = Field(
        "retrieve", description="off: no memory; block: every active fact (the newest first within the budget); "
                                "retrieve: the top_k facts most like the message (FAISS, cosine).")
    extractor: Literal["auto", "sentences", "llm"] = Field(
        "auto", description="sentences: first-person statements, judged by the NLI and encoder; llm: the chat "
                            "backend lists the facts (prompts/memory/extract.j2); auto: llm with an openai "
                            "backend, else sentences.")
    encoder: str = Field("packaged:minilm-l6", description="Sentence-embedding model for dedup and retrieval.")
    top_k: int = Field(3, ge=1, description="retrieve: most facts placed in the block per message.")
    min_score: float = Field(-1.0, ge=-1.0, le=1.0, description="retrieve: least cosine for a fact to be placed.")
    budget_tokens: int = Field(96, ge=8, description="Most tokens of the memory block (the chat model's tokenizer; "
                                                     "words without one).")
    dedup_cosine: float = Field(0.9, gt=0.0, le=1.0, description="A candidate is a duplicate when its cosine to "
                                                                 "an active fact reaches this.")
    entailment: float = Field(0.6, gt=0.0, lt=1.0, description="A candidate is a duplicate when the NLI finds it "
                                                               "entails, or is entailed by, a fact with this probability.")
    contradiction: float = Field(0.6, gt=0.0, lt=1.0, description="A candidate supersedes the facts it contradicts "
                                                                  "with this probability (both kept, dated).")
    compare_top: int = Field(8, ge=1, description="Active facts (nearest by cosine) the NLI compares a candidate with.")
    min_content_words: int = Field(1, ge=0, description="sentences: least content words in a fact.")
    max_words: int = Field(40, ge=3, description="sentences: longest sentence kept as a fact, in words.")

class ExecutorConfig(Section):
    """Where the heavy per-record work (NLI, sentence embeddings) runs: in this process, or fanned out
    over a Ray cluster (`pip install persona_forge[ray]`). Request-bound work (generation, the judge)
    always runs on the chat backend's own concurrency."""

    kind: Literal["local", "ray"] = Field("local", description="local: in this process (no Ray needed); ray: a "
                                                               "pool of actors that load the model once per run.")
    address: str | None = Field(None, description="ray: the cluster to join (e.g. ray://head:10001 or auto); default: "
                                                  "$RAY_ADDRESS, else a local Ray started for this run.")
    actors: int = Field(2, ge=1, description="ray: actors per model (each holds one copy of the model).")
    cpus_per_actor: float = Field(1.0, gt=0, description="ray: CPUs each actor reserves (and its torch threads).")
    batch_size: int = Field(1024, ge=1, description="ray: items per chunk sent to an actor.")
    object_store_mb: int = Field(384, ge=64, description="ray: object store of a locally started Ray, in MB "
                                                         "(small machines need little: only texts and scores move).")


class ScoreConfig(Section):
    """`forge score`: per-reply quality signals of a conversation corpus (length, IFD, reference
    perplexity, persona entailment and contradiction), each in its own field, for curate and for study."""

    data: Path | None = Field(None, description="Conversations to score: Dialogue records or a "
                                                "Synthetic-Persona-Chat-shaped JSONL(.gz) (forge score --data).")
    out: Path | None = Field(None, description="Folder of <data name>.scores.jsonl and its manifest; default: "
                                               "beside the data.")
    positions: Literal["study", "all"] = Field(
        "study", description="Which replies are scored, as forge curate builds its next_reply samples: study: one "
                             "per conversation (the reply at `position`, or the last before it); all: every reply.")
    position: int = Field(7, ge=1, description="study: the 0-based turn scored (7: the 8th).")
    context: int = Field(6, ge=0, description="Earlier turns kept before the other user's turn (as curate and eval).")
    model: str | None = Field(None, description="The base model whose losses give IFD and perplexity; default: "
                                                "backend.model (a local model: the losses need its logits).")
    nli: bool = Field(True, description="Grounding signals from the recipe's NLI (nli:): largest entailment and "
                                        "contradiction of the reply against its persona's sentences, and the C-score.")
    limit: int = Field(0, ge=0, description="Score the first N conversations; 0: all (a larger N later continues).")
    batch_size: int = Field(8, ge=1, description="Sequences per forward pass.")
    chunk: int = Field(64, ge=1, description="Replies scored and written per step (a kill loses at most one chunk).")
    threads: int | None = Field(None, ge=1, description="torch threads; default: the usable cores.")

    def identity(self) -> dict[str, Any]:
        """What decides each record: not the paths (the data is hashed apart), limit, batches or threads."""
        return self.model_dump(mode="json", exclude={"data", "out", "limit", "batch_size", "chunk", "threads"})


class Recipe(Section):
    run_dir: Path = Field(Path("runs/default"), description="Where every stage writes.")
    seed: int = Field(0, description="Global seed.")
    prompts_dir: Path | None = Field(None, description="A folder of prompt templates that override the built-in ones.")
    backend: BackendConfig = Field(default_factory=LocalBackendConfig)
    complete: CompleteConfig = Field(default_factory=CompleteConfig)
    nli: NLIConfig = Field(default_factory=NLIConfig)
    personas: PersonasConfig = Field(default_factory=PersonasConfig)
    pair: PairConfig = Field(default_factory=PairConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    restyle: RestyleConfig = Field(default_factory=RestyleConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)


def load_recipe(path: Path | None, overrides: dict[str, Any] | None = None,
                sources: dict[str, str] | None = None) -> Recipe:
    """Read a recipe (or the defaults), apply dotted-key overrides, validate.

    `sources` names where an override came from (dotted key -> "--n", "--set curate.n"): a bad
    value is then blamed on that flag instead of the recipe file. An override that switches a backend's
    kind leaves out the recipe's settings of the old kind (`--set backend.kind=fake` over a local recipe
    drops its batch_size)."""
    data: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        data = _read_yaml(Path(path))
        _resolve_relative(data, Path(path))
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    kinds_before = {section: _kind_at(data, section) for section in _kind_overrides(overrides)}
    for dotted, value in overrides.items():
        _set_dotted(data, dotted, value)
    for section, before in kinds_before.items():
        _leave_out_other_kinds(data, section, before, overrides)
    return validate_recipe(data, where, sources)


def validate_recipe(data: dict[str, Any], where: str, sources: dict[str, str] | None = None) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        error = dict(exc.errors()[0])
        loc, kind = _plain_loc(error["loc"])
        error.update(loc=tuple(loc), backend_kind=kind)
        return_where = _blame(error, where, sources or {})
        raise UserError(f"{return_where}: {_explain(error)}") from None


# --- backend sections: one model per kind --------------------------------------------------------

def _is_backend(annotation: Any) -> bool:
    """Whether a field holds a backend section (BackendConfig, or BackendConfig | None)."""
    from typing import get_args, get_origin

    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if isinstance(annotation, type) and get_origin(annotation) is None:
        return issubclass(annotation, _BackendBase)
    return any(_is_backend(arg) for arg in get_args(annotation))


def _plain_loc(loc: tuple[Any, ...]) -> tuple[list[str], str | None]:
    """An error's location without the kind pydantic inserts after a backend section
    (backend.openai.batch_size -> backend.batch_size), and that kind."""
    items, out, kind = [str(p) for p in loc], [], None
    model: type[BaseModel] | None = Recipe
    i = 0
    while i < len(items):
        key = items[i]
        out.append(key)
        i += 1
        annotation = getattr(model.model_fields.get(key), "annotation", None) if model else None
        if annotation is not None and _is_backend(annotation):
            model = None
            if i < len(items) and items[i] in BACKEND_KINDS:
                kind, model = items[i], BACKEND_KINDS[items[i]]
                i += 1
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            model = None
    return out, kind


def _kind_overrides(overrides: dict[str, Any]) -> list[str]:
    """The backend sections whose kind an override sets (`--set backend.kind=openai` -> "backend")."""
    sections = []
    for dotted in overrides:
        section, _, last = dotted.rpartition(".")
        if last == "kind" and section and _is_backend(getattr(_field_at(section.split(".")), "annotation", None)):
            sections.append(section)
    return sections


def _field_at(keys: list[str]) -> Any:
    model: Any = Recipe
    field = None
    for key in keys:
        field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return field


def _kind_at(data: dict[str, Any], section: str) -> str:
    node: Any = data
    for key in section.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    kind = node.get("kind", "local") if isinstance(node, dict) else "local"
    return kind if isinstance(kind, str) else ""


def _leave_out_other_kinds(data: dict[str, Any], section: str, before: str, overrides: dict[str, Any]) -> None:
    """A kind switched on the command line (--set backend.kind=openai, forge chat --endpoint) leaves out
    the recipe's settings that belong to the old kind only; settings given on the command line stay
    (and a wrong one is refused)."""
    node: Any = data
    for key in section.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    now = node.get("kind") if isinstance(node, dict) else None
    if now == before or not (isinstance(now, str) and now in BACKEND_KINDS and before in BACKEND_KINDS):
        return
    given = {d[len(section) + 1:].split(".")[0] for d in overrides if d.startswith(section + ".")}
    old, new = BACKEND_KINDS[before].model_fields, BACKEND_KINDS[now].model_fields
    for key in [k for k in node if k in old and k not in new and k not in given]:
        del node[key]


def _blame(error: dict[str, Any], where: str, sources: dict[str, str]) -> str:
    """The flag that set the bad value (the most specific one covering its path), else `where`."""
    dotted = ".".join(str(p) for p in error["loc"])
    covering = [key for key in sources if dotted == key or dotted.startswith(key + ".")]
    return sources[max(covering, key=len)] if covering else where


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: recipe not found; give a YAML file (see recipes/ for examples)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{path}{at}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of sections, got {type(data).__name__}")
    return data


# Paths in a recipe are relative to the working directory, as on the command line, except
# prompts_dir, which belongs with the recipe that names it.
def _resolve_relative(data: dict[str, Any], recipe_path: Path) -> None:
    prompts_dir = data.get("prompts_dir")
    if isinstance(prompts_dir, str) and not Path(prompts_dir).is_absolute():
        data["prompts_dir"] = str(recipe_path.parent / prompts_dir)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise UserError(f"cannot set {dotted}: {key} is not a section")
    node[keys[-1]] = value


def parse_set_option(items: tuple[str, ...]) -> dict[str, Any]:
    """`--set generate.candidates=5` pairs into a dict of YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set backend.concurrency=32")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


def _explain(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc) or "(top level)"
    if error["type"] == "backend_kind":
        given = error.get("input")
        if isinstance(given, dict):
            return f"{where}.kind: Input should be 'local', 'openai' or 'fake'"
        return f"{where}: expected a backend section, e.g. {{kind: openai, model: NAME}}"
    if error["type"] == "extra_forbidden":
        kind = error.get("backend_kind")
        others = {k: m for k, m in BACKEND_KINDS.items() if kind and k != kind}
        owner = next((k for k, m in others.items() if loc[-1] in m.model_fields), None)
        if owner:
            section = ".".join(loc[:-1])
            return (f"{where}: not a setting of kind {kind} (it belongs to kind {owner}); remove it or set "
                    f"{section}.kind: {owner}")
        parent = _model_at(loc[:-1], kind)
        hint = ""
        if parent is not None:
            close = difflib.get_close_matches(loc[-1], list(parent.model_fields), n=1)
            elsewhere = [(k, c) for k, m in others.items()
                         for c in difflib.get_close_matches(loc[-1], list(m.model_fields), n=1)]
            if close:
                hint = f" (did you mean '{close[0]}'?)"
            elif elsewhere:
                hint = f" (did you mean '{elsewhere[0][1]}', a setting of kind {elsewhere[0][0]}?)"
            else:
                hint = f" (known keys: {', '.join(parent.model_fields)})"
        return f"{where}: unknown key{hint}"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


def _model_at(loc: list[str], kind: str | None = None) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for key in loc:
        field = model.model_fields.get(key)
        annotation = getattr(field, "annotation", None)
        if annotation is not None and _is_backend(annotation):
            model = BACKEND_KINDS[kind or "local"]
            continue
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
