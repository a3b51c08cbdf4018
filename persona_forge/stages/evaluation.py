"""`forge eval`: the study's next-reply protocol on held-out conversations, base model vs adapters.

In:  conversations in the Synthetic-Persona-Chat shape (user1_persona, user2_persona, turns; default
     corpora/spc/test.jsonl.gz). Each gives one example: the replying user's persona as the system
     prompt, turns 1-6 as context, turn 7 as the prompt and turn 8 as the reference
     (`samples.next_reply`, the same shape curate trains on).
Out: <run_dir>/eval/generations.jsonl (EvalGeneration: per model per example, the reply and its
     metrics; appended as chunks finish, so a killed run resumes without regenerating),
     metrics.json (every metric with a bootstrap interval, per model, and adapter - base deltas),
     table.md, eval.png, report.md; <run_dir>/eval.manifest.json.

Models: the recipe's backend model ("base") and each adapter (a LoRA folder from `forge train`),
loaded by `lm.load_chat_model` with the adapter merged. Replies are greedy by default (comparable
across models), batched with left padding, with the local backend's repetition penalty. The
reference's perplexity is computed from the same loaded model (loss on the reference tokens only,
conditioned on the chat-templated prompt); an `openai` backend has no logits to read, so its
perplexity is reported as not available. With eval.hits_candidates K > 0 (local models), Hits@1 of K
ranks the reference among K-1 replies drawn (seeded per example) from the other conversations of the
same file by the same summed log-likelihood. With a local model and greedy replies, the reply, the
reference's NLL and the candidates' come from one pass over each prompt (decoding.generate_and_score,
examples ordered by prompt length). The metric keys are listed once, in metrics.METRICS.
"""

from __future__ import annotations

import gc
import hashlib
import html
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import metrics as M
from .. import layout, plots, ui
from ..config import BackendConfig, EvalConfig, NLIConfig
from ..contract import StageContext, StageResult
from ..corpora import persona_sentences, spc_file
from ..errors import UserError
from ..samples import next_reply
from ..schema import BASE, ChatMessage, EvalGeneration, Provenance, Turn, record_id
from ..retrieval import RetrievalIndex, training_pairs
from ..store import JsonlStore, RunDir, atomic_write_json, atomic_write_text, file_sha256, iter_json_lines

STAGE = "eval"
FOLDER = layout.EVAL
INPUTS = ()  # eval.data, else the packaged SPC test split; adapters from train/<name>/adapter
OUTPUTS = (FOLDER,)

DELTA_KEYS = tuple(m.key for m in M.DELTA_METRICS)
WHOLE_SET = {m.key for m in M.METRICS if not m.interval}   # distinct-n: one value for the set, no interval


@dataclass(frozen=True)
class Example:
    id: str
    source_id: str
    messages: list[ChatMessage]
    persona: list[str]
    reference: str


@dataclass(frozen=True)
class ModelUnderTest:
    name: str
    adapter: Path | None
    digest: str
    retrieval: Path | None = None   # the retrieval baseline's training corpus (no model: lookup)


RETRIEVAL = "retrieval"


def default_data() -> Path:
    return spc_file("test")


# --- inputs ----------------------------------------------------------------------------------------

def load_examples(path: Path, cfg: EvalConfig) -> tuple[list[Example], int]:
    """The usable examples (up to cfg.limit) and how many conversations were skipped as too short."""
    examples: list[Example] = []
    skipped = 0
    for line_no, row in iter_json_lines(path):
        if not isinstance(row, dict) or not isinstance(row.get("turns"), list):
            raise UserError(f"{path}:{line_no}: not a conversation; each line needs user1_persona, user2_persona "
                            f"and turns [{{speaker: user1|user2, text}}] (the Synthetic-Persona-Chat shape)")
        try:
            turns = [Turn(speaker=t["speaker"], text=str(t["text"])) for t in row["turns"]]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}:{line_no}: a turn is not {{speaker: user1|user2, text}}; fix that line") from None
        if len(turns) <= cfg.position:
            skipped += 1
            continue
        key = f"{turns[cfg.position].speaker}_persona"
        persona = persona_sentences(row, key, f"{path}:{line_no}")
        sample = next_reply(persona, turns, cfg.position, cfg.context)
        if sample is None:
            skipped += 1
            continue
        messages, reference = sample
        source = str(row.get("id") or record_id(row["turns"]))
        examples.append(Example(record_id(source, cfg.position, cfg.context), source, messages, list(persona),
                                reference))
        if cfg.limit and len(examples) >= cfg.limit:
            break
    if not examples:
        raise UserError(f"{path}: no conversation has a reply at turn {cfg.position + 1} after the other "
                        f"user's turn; give longer conversations or a smaller eval.position")
    return examples, skipped


def models_under_test(chat: BackendConfig, adapters: dict[str, Path],
                      retrieval: Path | None = None, retrieval_encoder: str = "") -> list[ModelUnderTest]:
    from ..lm import check_adapter

    models = [ModelUnderTest(BASE, None, _digest(chat.model))]
    for name, folder in adapters.items():
        if name == BASE:
            raise UserError(f"--adapter {name}={folder}: '{BASE}' names the model without an adapter; "
                            f"choose another name")
        if chat.kind == "openai":
            raise UserError(f"--adapter {name}: adapters need a local model (backend.kind: local); the openai "
                            f"backend serves only its own model")
        check_adapter(folder)
        models.append(ModelUnderTest(name, Path(folder), adapter_digest(Path(folder))))
    if retrieval is not None:
        if RETRIEVAL in adapters:
            raise UserError(f"--adapter {RETRIEVAL}: the name is the retrieval baseline's (eval.retrieval); "
                            f"choose another name")
        corpus = Path(retrieval)
        if not corpus.is_file():
            raise UserError(f"eval.retrieval: {corpus} is not a file; give a Synthetic-Persona-Chat-shaped "
                            f"training corpus, e.g. corpora/spc/train.jsonl.gz")
        digest = record_id(RETRIEVAL, file_sha256(corpus), retrieval_encoder)
        models.append(ModelUnderTest(RETRIEVAL, None, digest, retrieval=corpus))
    return models


def parse_adapter_options(values: Sequence[str]) -> dict[str, Path]:
    """`--adapter NAME=DIR` (or just DIR: NAME is the folder's parent's name, as forge train lays
    them out: <run_dir>/train/<name>/adapter/)."""
    out: dict[str, Path] = {}
    for value in values:
        name, sep, folder = value.partition("=")
        if not sep:
            folder = value
            path = Path(folder).resolve()
            name = path.parent.name if path.name == "adapter" else path.name
        if not name or not folder:
            raise UserError(f"--adapter {value!r}: expected NAME=DIR or DIR")
        if name in out:
            raise UserError(f"--adapter {value!r}: the name '{name}' is given twice; use NAME=DIR to tell them apart")
        out[name] = Path(folder)
    return out


def adapter_digest(folder: Path) -> str:
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        weights = folder / "adapter_model.bin"
    if not weights.is_file():
        raise UserError(f"{folder}: no adapter_model.safetensors; give the `adapter` folder that forge train wrote")
    return hashlib.sha256(weights.read_bytes()).hexdigest()[:16]


def _digest(spec: str) -> str:
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


# --- Hits@1 candidates ---------------------------------------------------------------------------------

def distractor_pool(path: Path) -> list[tuple[str, str]]:
    """(conversation id, text) of every non-empty turn in the file: the replies Hits@1 draws its
    distractors from (the whole file, whatever the limit, so an example's candidates never change)."""
    pool = []
    for _, row in iter_json_lines(path):
        turns = row.get("turns") if isinstance(row, dict) else None
        if not isinstance(turns, list):
            continue
        source = str(row.get("id") or record_id(turns))
        pool += [(source, str(t["text"]).strip()) for t in turns
                 if isinstance(t, dict) and str(t.get("text") or "").strip()]
    return pool


def hits_candidates(example: Example, pool: Sequence[tuple[str, str]], k: int, seed: int) -> list[str]:
    """The reference first, then k-1 replies drawn (seeded by the example) from other conversations,
    none equal to the reference (case and spacing aside); fewer when the pool runs out."""
    rng = np.random.default_rng(int(record_id(seed, "hits", example.id), 16) % 2**32)
    key = " ".join(example.reference.lower().split())
    out, taken = [example.reference], set()
    for i in rng.permutation(len(pool)):
        if len(out) >= k:
            break
        source, text = pool[i]
        norm = " ".join(text.lower().split())
        if source == example.source_id or norm == key or norm in taken:
            continue
        taken.add(norm)
        out.append(text)
    return out


# --- scorers ---------------------------------------------------------------------------------------

@dataclass
class Scorers:
    """The heavy metric models, made on first use (tests pass light ones)."""

    bertscore_factory: Callable[[], Callable[[Sequence[str], Sequence[str]], list[tuple[float, float, float]]]]
    nli_factory: Callable[[], Any]
    _bertscore: Any = None
    _nli: Any = None

    @property
    def bertscore(self):
        if self._bertscore is None:
            self._bertscore = self.bertscore_factory()
        return self._bertscore

    @property
    def nli(self):
        if self._nli is None:
            self._nli = self.nli_factory()
        return self._nli


def score_examples(examples: Sequence[Example], replies: Sequence[str], scorers: Scorers,
                   threshold: float) -> list[tuple[dict[str, float | None], list[int]]]:
    """Per-example metrics and BLEU statistics for these replies."""
    from ..nli.labels import CONTRADICTION

    refs = [e.reference for e in examples]
    berts = scorers.bertscore(list(replies), refs)
    judged = M.persona_nli(scorers.nli, [e.persona for e in examples], replies)
    out = []
    for reply, ref, bert, rows in zip(replies, refs, berts, judged):
        row: dict[str, float | None] = {"bleu_sentence": M.sentence_bleu(reply, ref)}
        row.update(M.rouge(reply, ref))
        row.update(bertscore_p=bert[0], bertscore_r=bert[1], bertscore_f1=bert[2])
        row["f1"] = M.unigram_f1(reply, ref)
        c = None if rows is None else float(rows[:, CONTRADICTION].max())
        row["max_contradiction"] = c
        cs = None if rows is None else M.c_score(rows)
        row["c_score"] = None if cs is None else float(cs)
        row["contradicts"] = None if c is None else float(c > threshold)
        row["empty"] = float(not reply.strip())
        out.append((row, M.bleu_stats(reply, ref).as_list()))
    return out


# --- generation --------------------------------------------------------------------------------------

class Generator:
    """Replies (and reference NLLs, when the model is local) for one model under test."""

    def __init__(self, backend, lm: tuple[Any, Any] | None, description: str, decodes_locally: bool = False):
        self.timings: dict[str, float] = {}   # seconds per phase of the shared pass (bench/eval_speed.py)
        self.backend = backend
        self.lm = lm
        self.description = description
        # True when the replies come from `lm` itself (the local backend): then greedy replies,
        # perplexity and Hits@1 share one pass over each prompt (decoding.generate_and_score).
        self.decodes_locally = decodes_locally and lm is not None
        self._prompt_ids: dict[str, list[int]] = {}   # example id -> templated prompt, made once

    @classmethod
    def for_model(cls, cfg: EvalConfig, chat: BackendConfig, model: ModelUnderTest, progress: bool) -> "Generator":
        """The generator of `model` on the backend `chat` names (its adapter, eval's batch size and threads)."""
        from ..backends import build_backend

        if model.retrieval is not None:
            return RetrievalGenerator.build(model.retrieval, cfg.retrieval_encoder, model.digest)
        update: dict[str, Any] = {"adapter": model.adapter, "batch_size": cfg.batch_size}
        if cfg.threads:
            update["threads"] = cfg.threads
        backend = build_backend(chat.model_copy(update=update), progress=progress)
        lm = backend.load() if chat.kind == "local" else None
        return cls(backend, lm, json.dumps(backend.describe()), decodes_locally=chat.kind == "local")

    def requests(self, examples: Sequence[Example], cfg: EvalConfig) -> list:
        from ..backends import ChatRequest

        return [ChatRequest.of([m.model_dump() for m in e.messages], max_tokens=cfg.max_new_tokens,
                               temperature=cfg.temperature if cfg.sample else 0.0,
                               top_p=cfg.top_p if cfg.sample else 1.0,
                               seed=int(record_id(cfg.seed, e.id), 16) % 2**31)
                for e in examples]

    def generate(self, examples: Sequence[Example], cfg: EvalConfig) -> list:
        return self.backend.complete_sync(self.requests(examples, cfg))

    def chunks(self, examples: Sequence[Example], cfg: EvalConfig) -> Iterator[tuple[list[Example], list | None]]:
        """Each chunk of `cfg.chunk` examples, in order, with its completions; None where the replies
        come with the scores (local greedy decoding) or from `generate` (a generator without a
        backend). Replies from a backend stream through one session: while a chunk is scored, the
        requests of the chunks after it are in flight."""
        steps = range(0, len(examples), cfg.chunk)
        if self.backend is None or (self.decodes_locally and not cfg.sample):
            for start in steps:
                yield list(examples[start:start + cfg.chunk]), None
            return
        with self.backend.session() as session:
            for start, completions in session.chunks(self.requests(examples, cfg), cfg.chunk):
                yield list(examples[start:start + cfg.chunk]), completions

    def order(self, examples: Sequence[Example]) -> list[Example]:
        """Examples by prompt length when the model is local (chunks of similar length pad less)."""
        if self.lm is None:
            return list(examples)
        return sorted(examples, key=lambda e: len(self.prompt_ids(e)))

    def prompt_ids(self, example: Example) -> list[int]:
        if example.id not in self._prompt_ids:
            from ..decoding import prompt_ids

            _, tokenizer = self.lm  # type: ignore[misc]
            self._prompt_ids[example.id] = prompt_ids(tokenizer, [m.model_dump() for m in example.messages])
        return self._prompt_ids[example.id]

    def nll(self, examples: Sequence[Example], batch_size: int) -> list[tuple[float, int]] | None:
        if self.lm is None:
            return None
        return [r.nll[0] for r in self._score(examples, [[e.reference] for e in examples], 0, 1.0, batch_size)]

    def candidate_scores(self, examples: Sequence[Example], candidates: Sequence[Sequence[str]],
                         batch_size: int) -> list[list[float]] | None:
        """Per example, the summed log-likelihood of each candidate reply given its prompt (None
        without a local model): Hits@1's ranking score."""
        if self.lm is None:
            return None
        return [[-total for total, _ in r.nll] for r in self._score(examples, candidates, 0, 1.0, batch_size)]

    def generate_and_score(self, examples: Sequence[Example], cfg: EvalConfig, candidates: Sequence[Sequence[str]],
                           repetition_penalty: float) -> tuple[list, list[tuple[float, int]], list[list[float]]]:
        """Greedy replies, the reference's (summed NLL, tokens) and each candidate's log-likelihood
        from one pass over each prompt. candidates[i][0] is example i's reference (Hits@1's candidate 0),
        so the perplexity is read from the same numbers and never computed twice."""
        from ..backends import Completion

        results = self._score(examples, candidates, cfg.max_new_tokens, repetition_penalty, cfg.batch_size)
        _, tokenizer = self.lm  # type: ignore[misc]
        completions = []
        for r in results:
            ids = r.tokens[:-1] if r.stopped else list(r.tokens)   # decoding stops on the first stop token
            completions.append(Completion(text=tokenizer.decode(ids, skip_special_tokens=True).strip(),
                                          finish_reason="stop" if r.stopped else "length",
                                          prompt_tokens=r.prompt_tokens, completion_tokens=len(ids)))
        return completions, [r.nll[0] for r in results], [[-total for total, _ in r.nll] for r in results]

    def _score(self, examples: Sequence[Example], continuations: Sequence[Sequence[str]], max_new_tokens: int,
               repetition_penalty: float, batch_size: int) -> list:
        from ..decoding import generate_and_score

        model, tokenizer = self.lm  # type: ignore[misc]
        prompts = [self.prompt_ids(e) for e in examples]
        return generate_and_score(model, tokenizer, prompts, continuations, max_new_tokens=max_new_tokens,
                                  repetition_penalty=repetition_penalty, batch_size=batch_size,
                                  timings=self.timings)


class RetrievalGenerator(Generator):
    """The retrieval baseline (retrieval.py) behind the Generator interface: its replies are looked
    up, not decoded, so it has no reference perplexity and no Hits@1."""

    def __init__(self, index: RetrievalIndex, embed: Callable[[list[str]], Any], description: str):
        super().__init__(None, None, description)
        self.index, self.embed = index, embed

    @classmethod
    def build(cls, corpus: Path, encoder_spec: str, digest: str) -> "RetrievalGenerator":
        from ..embeddings import Encoder
        from ..models import cache_dir

        encoder = Encoder(encoder_spec, batch_size=256)

        def embed(texts: list[str]):
            unique = list(dict.fromkeys(texts))   # SPC repeats greetings and short answers
            vectors = encoder.encode(unique, "retrieval index" if len(unique) > 1000 else "retrieval queries")
            row = {text: i for i, text in enumerate(unique)}
            return vectors[[row[t] for t in texts]]

        # SPC train's 234k prompt turns take minutes to embed here: kept in the user cache per corpus and encoder
        index = RetrievalIndex.cached(training_pairs(corpus), embed, cache_dir() / "retrieval" / f"{digest}.npy")
        description = json.dumps({"kind": RETRIEVAL, "corpus": str(corpus), "pairs": len(index.replies),
                                  "encoder": encoder_spec})
        return cls(index, embed, description)

    def generate(self, examples: Sequence[Example], cfg: EvalConfig) -> list:
        from ..backends import Completion

        answers = self.index.answer([e.messages[-1].content for e in examples], [e.source_id for e in examples],
                                    self.embed)
        return [Completion(text=reply, finish_reason="stop") for reply, _ in answers]


GeneratorFactory = Callable[[EvalConfig, BackendConfig, ModelUnderTest, bool], Generator]


# --- the stage -----------------------------------------------------------------------------------------

def stage_config(cfg: EvalConfig, chat: BackendConfig, nli_config: NLIConfig) -> dict[str, Any]:
    backend = chat.identity()
    backend.pop("adapter", None)
    return {"eval": cfg.identity(), "backend": backend, "nli": nli_config.kind, "nli_model": nli_config.model}


def run(cfg: EvalConfig, context: StageContext, *, chat: BackendConfig, nli_config: NLIConfig,
        adapters: dict[str, Path] | None = None, scorers: Scorers | None = None,
        generator_factory: GeneratorFactory | None = None) -> StageResult:
    """Generate what is missing, score it, aggregate. `chat` is the recipe's backend section: the base
    model under test (and an adapter set on it is one more); `nli_config` the NLI section the default
    scorers load (and the config hash names). The result's `data` is metrics.json's content."""
    data = _run(cfg, context, chat, nli_config, adapters, scorers, generator_factory)
    summary = {"examples": data["examples"], "models": ", ".join(data["models"]),
               "outputs": str(Path(context.run_dir) / FOLDER)}
    return StageResult.read(STAGE, summary, context.run_dir, OUTPUTS, data=data)


def _run(cfg: EvalConfig, context: StageContext, chat: BackendConfig, nli_config: NLIConfig,
         adapters: dict[str, Path] | None, scorers: Scorers | None,
         generator_factory: GeneratorFactory | None) -> dict[str, Any]:
    progress = context.progress
    data = Path(cfg.data) if cfg.data else default_data()
    examples, skipped = load_examples(data, cfg)
    # An adapter set on the backend itself is one more model under test; the base stays the bare model.
    on_backend = getattr(chat, "adapter", None)  # only a local backend has one
    from_backend = parse_adapter_options([str(on_backend)]) if on_backend else {}
    models = models_under_test(chat, {**from_backend, **cfg.adapters, **(adapters or {})}, cfg.retrieval,
                               cfg.retrieval_encoder)
    run_dir = RunDir(context.run_dir)
    stage = run_dir.begin(STAGE, stage_config(cfg, chat, nli_config), inputs=[data], outputs=OUTPUTS,
                          force=context.force)
    store = JsonlStore(run_dir.file(layout.EVAL_GENERATIONS), EvalGeneration)
    scorers = scorers or default_scorers(cfg, chat, nli_config, progress)
    factory = generator_factory or Generator.for_model
    pool = distractor_pool(data) if cfg.hits_candidates else []

    done = store.ids()
    generated = 0
    failed: list[str] = []
    for model in models:
        todo = [e for e in examples if _gen_id(e, model) not in done]
        if not todo:
            continue
        generator = factory(cfg, chat, model, progress)
        todo = generator.order(todo)
        stage.record_model(model.name, generator.description)
        with store.appender() as out, ui.progress(f"eval {model.name}", total=len(todo)) as advance:
            for chunk, completions in generator.chunks(todo, cfg):
                for record in _chunk_records(chunk, model, generator, scorers, cfg, chat, pool, completions):
                    if record.error is not None:   # not written: a re-run asks again
                        failed.append(f"{model.name}: {record.error}")
                        continue
                    out.write(record)
                    generated += 1
                advance(len(chunk))
        del generator
        gc.collect()
    if failed:
        stage.set_count("failed", len(failed))
        stage.save()
        raise UserError(f"{len(failed)} replies failed after retries (first: {failed[0]}); run the same command "
                        f"again to retry only those")

    wanted = {_gen_id(e, m) for e in examples for m in models}
    records = [r for r in store.read() if r.id in wanted]
    result = aggregate(records, examples, models, cfg, chat, nli_config)
    result.update(data=str(data), examples=len(examples), skipped_conversations=skipped)
    atomic_write_json(run_dir.file(layout.EVAL_METRICS), result)
    atomic_write_text(run_dir.file(layout.EVAL_TABLE), markdown_table(result))
    save_chart(run_dir.file(layout.EVAL_CHART), result)
    atomic_write_text(run_dir.file(layout.EVAL_REPORT), report(result, records, examples))
    stage.set_count("examples", len(examples))
    stage.set_count("generations", len(records))
    stage.set_count("generated_this_run", generated)
    stage.finish(**{f"{m}.{k}": v["value"] for m, row in result["models"].items()
                    for k, v in row["metrics"].items() if k in DELTA_KEYS})
    return result


def default_scorers(cfg: EvalConfig, chat: BackendConfig, nli_config: NLIConfig, progress: bool) -> Scorers:
    """BERTScore at eval.bertscore_layer and the NLI `nli_config` names (an llm NLI asks `chat`)."""
    from ..backends import build_backend
    from ..nli.base import load_nli

    return Scorers(lambda: M.load_bertscore(cfg.bertscore_layer),
                   lambda: load_nli(nli_config, lambda: build_backend(chat), progress))


def _gen_id(example: Example, model: ModelUnderTest) -> str:
    return record_id(example.id, model.name, model.digest)


def _chunk_records(chunk: Sequence[Example], model: ModelUnderTest, generator: Generator, scorers: Scorers,
                   cfg: EvalConfig, chat: BackendConfig, pool: Sequence[tuple[str, str]] = (),
                   completions: list | None = None) -> list[EvalGeneration]:
    """The chunk's records; `completions`: its replies when they came already (Generator.chunks)."""
    candidates = ([hits_candidates(e, pool, cfg.hits_candidates, cfg.seed) for e in chunk] if cfg.hits_candidates
                  else None)
    ranked: list[list[float]] | None
    if generator.decodes_locally and not cfg.sample:
        completions, nll, ranked = generator.generate_and_score(
            chunk, cfg, candidates or [[e.reference] for e in chunk], chat.repetition_penalty)
    else:
        if completions is None:
            completions = generator.generate(chunk, cfg)
        nll = generator.nll(chunk, cfg.batch_size)
        ranked = generator.candidate_scores(chunk, candidates, cfg.batch_size) if candidates else None
    replies = [(c.text or "").strip() if c.ok else "" for c in completions]
    hits = None if ranked is None or candidates is None else [M.hits_at_1(scores, 0) for scores in ranked]
    scored = score_examples(chunk, replies, scorers, cfg.contradiction)
    params = {"sample": cfg.sample, "max_new_tokens": cfg.max_new_tokens,
              "repetition_penalty": chat.repetition_penalty if chat.kind == "local" else None}
    if cfg.sample:
        params.update(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
    records = []
    for i, (example, completion, reply, (row, stats)) in enumerate(zip(chunk, completions, replies, scored)):
        nll_sum, tokens = nll[i] if nll is not None else (None, None)
        if tokens:
            row["perplexity"] = M.perplexity(nll_sum, tokens)
        if hits is not None:
            row["hits_at_1"] = hits[i]
        records.append(EvalGeneration(
            id=_gen_id(example, model), example_id=example.id, source_id=example.source_id, model=model.name,
            model_digest=model.digest, messages=example.messages, persona=example.persona,
            reference=example.reference, reply=reply, finish_reason=completion.finish_reason,
            error=completion.error, metrics=row, bleu_stats=stats, reference_nll=nll_sum,
            reference_tokens=tokens,
            provenance=Provenance(backend=RETRIEVAL if model.retrieval else chat.kind,
                                  model=str(model.retrieval) if model.retrieval else chat.model,
                                  params={**params, "adapter": str(model.adapter) if model.adapter else None})))
    return records


# --- aggregation ---------------------------------------------------------------------------------------

def aggregate(records: Sequence[EvalGeneration], examples: Sequence[Example], models: Sequence[ModelUnderTest],
              cfg: EvalConfig, chat: BackendConfig, nli_config: NLIConfig) -> dict[str, Any]:
    """Every metric per model with bootstrap intervals (resamples shared across models: paired), and
    each adapter's difference from the base model."""
    by_key = {(r.model, r.example_id): r for r in records}
    n = len(examples)
    indices = M.bootstrap_indices(n, cfg.bootstrap, cfg.seed)
    statistics: dict[str, dict[str, Callable[[np.ndarray], float]]] = {}
    out_models: dict[str, Any] = {}
    for model in models:
        rows = [by_key.get((model.name, e.id)) for e in examples]
        if any(r is None for r in rows):
            missing = sum(r is None for r in rows)
            raise UserError(f"{missing} generations of {model.name} are missing; run forge eval again to make them")
        stats = _statistics(rows)
        statistics[model.name] = stats
        out_models[model.name] = {
            "adapter": str(model.adapter) if model.adapter else None, "digest": model.digest, "n": n,
            "empty_replies": int(sum(r.metrics.get("empty") or 0 for r in rows)),
            "errors": int(sum(r.error is not None for r in rows)),
            "metrics": {k: _clean(M.interval(f, indices, n, cfg.confidence) if k not in WHOLE_SET else
                                  {"value": f(np.arange(n)), "low": None, "high": None})
                        for k, f in stats.items()},
        }
    for model in models[1:]:
        deltas = {}
        for key in DELTA_KEYS:
            a, b = statistics[model.name][key], statistics[BASE][key]
            deltas[key] = _clean(M.interval(lambda idx, a=a, b=b: a(idx) - b(idx), indices, n, cfg.confidence))
        out_models[model.name]["delta_vs_base"] = deltas
    settings = {
        "bleu": M.bleu_description(),
        "rouge": "rouge-score: ROUGE-1/2/L F-measure, Porter stemmer (table: x100)",
        "bertscore": M.bertscore_description(cfg.bertscore_layer) + " (table: x100)",
        "perplexity": "exp(mean NLL of the reference reply's tokens), conditioned on the chat-templated prompt; "
                      "corpus-level (token-weighted)" if chat.kind == "local" else
                      f"not available: the {chat.kind} backend gives no token log-probabilities",
        "f1": "ConvAI2 unigram F1 (ParlAI: lowercase, punctuation and a/an/the removed, whitespace tokens, "
              "multiset overlap), mean over examples (table: x100)",
        "distinct": "distinct-1/2: distinct n-grams / all n-grams over all of a model's replies (lowercase, "
                    "punctuation removed); one value for the set, no interval (table: x100)",
        "hits": (f"Hits@1 of {cfg.hits_candidates}: the reference among {cfg.hits_candidates - 1} replies drawn "
                 f"(seeded per example, seed {cfg.seed}) from other conversations of the file, ranked by the "
                 f"model's summed log-likelihood given the prompt; a tie is a miss (table: %)"
                 if cfg.hits_candidates and any("hits_at_1" in r.metrics for r in records) else
                 "off (eval.hits_candidates: 0)" if not cfg.hits_candidates else
                 f"not available: the {chat.kind} backend gives no token log-probabilities"),
        "c_score": "C-score per reply: the NLI label (argmax) of each (persona attribute, reply) pair; +1 when any "
                   "attribute is entailed, else -1 when any is contradicted, else 0; mean over non-empty replies",
        "nli": f"{nli_config.kind} NLI; a reply contradicts its persona when max over attributes of "
               f"P(contradiction | premise=attribute, hypothesis=reply) > {cfg.contradiction}; empty replies "
               f"are left out of the rate",
        "bootstrap": f"{cfg.bootstrap} resamples of the examples, seed {cfg.seed}, percentile "
                     f"{cfg.confidence:.0%} intervals; the same resamples for every model (paired deltas)",
        "generation": ("sampled (temperature {cfg.temperature}, top_p {cfg.top_p})".format(cfg=cfg) if cfg.sample
                       else "greedy") + f", max {cfg.max_new_tokens} new tokens" +
                      (f", repetition penalty {chat.repetition_penalty}"
                       if chat.kind == "local" else ""),
        "protocol": f"replying user's persona as system prompt, {cfg.context} context turns, turn {cfg.position} "
                    f"as the prompt, turn {cfg.position + 1} as the reference (samples.next_reply)",
        "backend": chat.kind, "base_model": chat.model,
    }
    return {"models": out_models, "settings": settings}


def _statistics(rows: Sequence[EvalGeneration]) -> dict[str, Callable[[np.ndarray], float]]:
    def values(key: str) -> list[float | None]:
        return [r.metrics.get(key) for r in rows]

    replies = [r.reply for r in rows]

    def distinct(n: int) -> Callable[[np.ndarray], float]:
        def statistic(idx: np.ndarray) -> float:
            value = M.distinct_n([replies[i] for i in idx], n)
            return float("nan") if value is None else value
        return statistic

    stats: dict[str, Callable[[np.ndarray], float]] = {
        "bleu_corpus": M.corpus_bleu_of([M.BleuStats.from_list(r.bleu_stats) for r in rows]),
        "distinct1": distinct(1), "distinct2": distinct(2),
    }
    for key in M.MEAN_KEYS:
        stats[key] = M.mean_of(values(key))
    if all(r.reference_tokens for r in rows):
        stats["perplexity"] = M.corpus_perplexity_of([r.reference_nll for r in rows],
                                                     [r.reference_tokens for r in rows])
    else:
        stats["perplexity"] = lambda idx: float("nan")
    stats["contradiction_rate"] = M.mean_of(values("contradicts"))
    stats["max_contradiction"] = M.mean_of(values("max_contradiction"))
    missing = {m.key for m in M.METRICS} - set(stats)
    assert not missing, f"metrics.METRICS lists {missing} but no statistic computes them"
    return stats


def _clean(interval: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else v) for k, v in interval.items()}


# --- outputs -------------------------------------------------------------------------------------------

def _cell(interval: dict[str, Any], metric: M.Metric) -> str:
    if interval.get("value") is None:
        return "n/a"
    text = metric.cell(interval["value"])
    if interval.get("low") is not None:
        text += f" [{metric.cell(interval['low'])}, {metric.cell(interval['high'])}]"
    return text


def markdown_table(result: dict[str, Any]) -> str:
    """Rows: models; columns: the study's metrics, each with its 95% interval."""
    lines = ["| Model | " + " | ".join(m.title for m in M.METRICS) + " |",
             "|---|" + "---:|" * len(M.METRICS)]
    for name, row in result["models"].items():
        cells = [_cell(row["metrics"][m.key], m) for m in M.METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    n = next(iter(result["models"].values()))["n"]
    lines.append("")
    lines.append(f"n = {n} examples; values with {result['settings']['bootstrap']}. BLEU 0-100 "
                 f"({result['settings']['bleu']}); ROUGE and BERTScore x100; perplexity of the reference reply "
                 f"(lower is better; {result['settings']['perplexity']}); contradiction: % of non-empty replies "
                 f"the NLI judges to contradict the replying persona (lower is better); F1: ConvAI2's unigram F1 "
                 f"x100; distinct-1/2 x100 over all replies (no interval); Hits@1: "
                 f"{result['settings'].get('hits', 'off')}; C-score: mean persona consistency, -1 to +1.")
    return "\n".join(lines) + "\n"


def delta_table(result: dict[str, Any]) -> str:
    adapters = [(n, r) for n, r in result["models"].items() if "delta_vs_base" in r]
    if not adapters:
        return ""
    lines = ["| Adapter - base | " + " | ".join(m.title for m in M.DELTA_METRICS) + " |",
             "|---|" + "---:|" * len(M.DELTA_METRICS)]
    for name, row in adapters:
        lines.append(f"| {name} | " + " | ".join(_cell(row["delta_vs_base"][m.key], m) for m in M.DELTA_METRICS)
                     + " |")
    return "\n".join(lines) + "\n"


def save_chart(path: Path, result: dict[str, Any]) -> None:
    """Grouped bars per metric (0-100 scale) with interval whiskers, and perplexity on its own axis."""
    plt = plots.pyplot()
    keys = [(m.key, m.title, m.scale) for m in M.METRICS if m.key not in ("perplexity", "c_score")]
    names = list(result["models"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, gridspec_kw={"width_ratios": [5, 1]})
    x = np.arange(len(keys))
    for j, name in enumerate(names):
        metrics = result["models"][name]["metrics"]
        vals, errs = _bars(metrics, [(k, s) for k, _, s in keys])
        offset, width = plots.grouped_offsets(j, len(names))
        ax.bar(x + offset, vals, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks(x, [t for _, t, _ in keys], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"forge eval: n = {next(iter(result['models'].values()))['n']}, 95% bootstrap intervals")
    ax.legend(fontsize=8)
    vals, errs = _bars({n: result["models"][n]["metrics"]["perplexity"] for n in names},
                       [(n, 1.0) for n in names])
    ax2.bar(np.arange(len(names)), vals, 0.6, yerr=errs, capsize=3, color=[f"C{j}" for j in range(len(names))])
    ax2.set_xticks(np.arange(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax2.set_title("reference perplexity" if any(v for v in vals) else "perplexity: n/a", fontsize=9)
    plots.save(fig, path)


def _bars(metrics: dict[str, Any], keys: Sequence[tuple[str, float]]) -> tuple[list[float], np.ndarray]:
    vals, low, high = [], [], []
    for key, scale in keys:
        m = metrics[key]
        v = (m["value"] or 0.0) * scale
        vals.append(v)
        low.append(max(0.0, v - m["low"] * scale) if m.get("low") is not None else 0.0)
        high.append(max(0.0, m["high"] * scale - v) if m.get("high") is not None else 0.0)
    return vals, np.array([low, high])


def report(result: dict[str, Any], records: Sequence[EvalGeneration], examples: Sequence[Example],
           shown: int = 5) -> str:
    s = result["settings"]
    parts = [
        "# forge eval report", "",
        f"Data: `{result['data']}`: {result['examples']} examples ({result['skipped_conversations']} conversations "
        f"too short skipped). Base model: `{s['base_model']}` ({s['backend']} backend).", "",
        "Models: " + ", ".join(f"**{n}**" + (f" (adapter `{r['adapter']}`)" if r["adapter"] else "")
                               for n, r in result["models"].items()), "",
        "## Results", "", markdown_table(result),
        "![metrics with intervals](eval.png)", "",
    ]
    deltas = delta_table(result)
    if deltas:
        parts += ["## Adapters against the base model", "",
                  "Paired differences (same bootstrap resamples); an interval that excludes 0 is a difference "
                  "the sample supports.", "", deltas]
    parts += ["## Replies", ""]
    for name, row in result["models"].items():
        if row["empty_replies"] or row["errors"]:
            parts.append(f"- {name}: {row['empty_replies']} empty replies, {row['errors']} generation errors")
    by_key = {(r.model, r.example_id): r for r in records}
    for example in examples[:shown]:
        parts.append(f"**{example.source_id}**, persona: {_quote(' '.join(example.persona))}")
        parts.append("")
        parts.append(f"> prompt: {_quote(example.messages[-1].content)}  ")
        parts.append(f"> reference: {_quote(example.reference)}  ")
        for name in result["models"]:
            rec = by_key.get((name, example.id))
            if rec is not None:
                c = rec.metrics.get("max_contradiction")
                flag = f" (contradiction {c:.2f})" if c is not None and rec.metrics.get("contradicts") else ""
                parts.append(f"> {name}: {_quote(rec.reply) or '(empty)'}{flag}  ")
        parts.append("")
    parts += ["## How each number was made", ""]
    parts += [f"- **{k}**: {v}" for k, v in s.items() if k not in ("backend", "base_model")]
    return "\n".join(parts) + "\n"


def _quote(text: str) -> str:
    return html.escape(" ".join(text.split()), quote=False)
