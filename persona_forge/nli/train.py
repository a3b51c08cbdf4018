"""Build the embedded NLI: a cross-encoder fine-tuned from the packaged all-MiniLM-L6-v2.

Trained on SICK (human-labelled; CC BY-NC-SA 3.0, so the built model is for non-commercial use)
plus the persona-domain pairs of data.py. Seeded and single-process, so a build is
reproducible on a given machine. The result lives in the user cache under a name that hashes
the training recipe, the corpora and the data-building code: change any of them and the next
use builds a fresh model instead of reusing a stale one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import ui
from ..models import _file_lock, cache_dir, sentence_model_path
from ..resources import data_dir
from .labels import LABELS


@dataclass(frozen=True)
class TrainSettings:
    seed: int = 0
    epochs: float = 1.5  # over the larger set (mined pairs added): the build time stays near the old one
    batch_size: int = 32
    learning_rate: float = 5e-5
    warmup: float = 0.06
    weight_decay: float = 0.01
    max_length: int = 128
    frame_per_label: int = 2000
    corpus_per_label: int = 1200
    handwritten_repeats: int = 3
    unrelated: int = 2000
    ungrounded: int = 3000
    reactions: int = 4500
    # The mined natural-chat pairs (nli/mine.py): up to 3,000 a label from 1,500 train conversations.
    mined_conversations: int = 1500
    mined_per_label: int = 3000
    # Neutrals shaped like contradictions (nli/mine.py cross_slot_pairs): a job against a
    # self-description, favourites of different kinds.
    cross_slot: int = 1500
    # corpora/nli/chat_train_handwritten.jsonl: persona facts said indirectly in chat, by hand.
    chat_handwritten_repeats: int = 3
    threads: int | None = None


DEFAULT_SETTINGS = TrainSettings()
BUILD_VERSION = 1
LICENCE_NOTE = ("Trained on SICK (CC BY-NC-SA 3.0: non-commercial, share-alike) and on persona pairs built from "
                "Synthetic-Persona-Chat (CC-BY 4.0). Base encoder: all-MiniLM-L6-v2 (Apache-2.0).")


def build_key(settings: TrainSettings = DEFAULT_SETTINGS) -> str:
    """A hash of everything that determines the trained model."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": BUILD_VERSION, **asdict(settings), "threads": None}, sort_keys=True).encode())
    here = Path(__file__).parent
    for source in (here / "data.py", here / "frames.py", here / "mine.py", Path(__file__)):
        digest.update(source.read_bytes())
    corpora = data_dir("corpora")
    for name in ("nli/sick2014/SICK_train.txt", "nli/sick2014/SICK_trial.txt", "spc/train.jsonl.gz",
                 "nli/persona_train_handwritten.jsonl", "nli/chat_train_handwritten.jsonl"):
        digest.update(hashlib.sha256((corpora / name).read_bytes()).digest())
    return digest.hexdigest()[:12]


def embedded_dir(settings: TrainSettings = DEFAULT_SETTINGS) -> Path:
    return cache_dir() / "nli" / f"embedded-minilm-{build_key(settings)}"


def ensure_embedded(progress: bool = True, settings: TrainSettings = DEFAULT_SETTINGS) -> Path:
    """The built model's folder; builds it first if this machine has none (a few minutes)."""
    target = embedded_dir(settings)
    if (target / "build.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / ".build.lock"):
        if (target / "build.json").is_file():
            return target
        ui.info(f"building the embedded NLI model once into {target} (a few minutes on 2 cores)")
        build(target, settings, progress)
    return target


def build(target: Path, settings: TrainSettings = DEFAULT_SETTINGS, progress: bool = True) -> dict:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from ..hardware import set_torch_threads
    from .data import build_training_pairs, chat_handwritten_pairs, spc_personas

    started = time.time()
    threads = set_torch_threads(settings.threads)
    random.seed(settings.seed)
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    base = sentence_model_path("packaged:minilm-l6")
    pairs = build_training_pairs(settings.seed, settings.frame_per_label, settings.corpus_per_label,
                                 handwritten_repeats=settings.handwritten_repeats, unrelated=settings.unrelated,
                                 ungrounded=settings.ungrounded, reactions=settings.reactions)
    if settings.mined_per_label:
        from .mine import mined_pairs

        pairs += mined_pairs(settings.seed + 3, settings.mined_conversations, settings.mined_per_label)
    if settings.cross_slot:
        from .mine import cross_slot_pairs

        pairs += cross_slot_pairs(spc_personas(), settings.cross_slot, random.Random(settings.seed + 5))
    pairs += chat_handwritten_pairs() * settings.chat_handwritten_repeats
    random.Random(settings.seed + 4).shuffle(pairs)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=3, id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    encoded = tokenizer([p.premise for p in pairs], [p.hypothesis for p in pairs], truncation=True,
                        max_length=settings.max_length)
    labels = [LABELS.index(p.label) for p in pairs]
    batches = _length_bucketed_batches(encoded["input_ids"], settings, random.Random(settings.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup * len(batches)), len(batches))
    model.train()
    losses = []
    with ui.progress("training NLI", total=len(batches)) as advance:
        for batch in batches:
            features = tokenizer.pad({k: [encoded[k][i] for i in batch] for k in encoded.keys()},
                                     return_tensors="pt")
            output = model(**features, labels=torch.tensor([labels[i] for i in batch]))
            output.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(output.loss.item())
            advance()
    info = {
        "pairs": len(pairs), "steps": len(batches), "settings": asdict(settings), "threads": threads,
        "sources": _count([p.source.split(":")[0] for p in pairs]),
        "labels": _count([p.label for p in pairs]),
        "loss_first_100": float(np.mean(losses[:100])), "loss_last_100": float(np.mean(losses[-100:])),
        "seconds": round(time.time() - started, 1), "base": "packaged:minilm-l6", "licence": LICENCE_NOTE,
        "key": target.name,
    }
    _save(model, tokenizer, target, info)
    return info


def _length_bucketed_batches(input_ids, settings: TrainSettings, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: far less padding than random batches, still random order."""
    order = list(range(len(input_ids)))
    total = int(math.ceil(settings.epochs * len(order)))
    stream: list[int] = []
    while len(stream) < total:
        rng.shuffle(order)
        stream += order
    stream = stream[:total]
    window = settings.batch_size * 50
    batches = []
    for start in range(0, len(stream), window):
        chunk = sorted(stream[start:start + window], key=lambda i: len(input_ids[i]))
        batches += [chunk[k:k + settings.batch_size] for k in range(0, len(chunk), settings.batch_size)]
    rng.shuffle(batches)
    return batches


def _count(values: list[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _save(model, tokenizer, target: Path, info: dict) -> None:
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / "LICENCE.txt").write_text(LICENCE_NOTE + "\n")
    (tmp / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def rebuild(progress: bool = True, settings: TrainSettings = DEFAULT_SETTINGS) -> tuple[Path, dict]:
    """Build again even if a model with this key exists (`forge nli build --force`)."""
    target = embedded_dir(settings)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(target.parent / ".build.lock"):
        info = build(target, settings, progress)
    return target, info
