"""`forge train --method reward`: a reward model from preference pairs (trl RewardTrainer, LoRA).

In:  <run_dir>/preferences.jsonl (Preference records: two conversations of one pair, the critic's
     chosen and rejected; human judgements from forge annotate have the same shape), or --data FILE.
Out: <run_dir>/train/<name>/ (default train/reward/): adapter/ (a LoRA on the base as a one-output
     sequence classifier; the `score` head is saved whole), checkpoints/, log.jsonl, loss.png,
     reward_accuracy.png (ranking accuracy on the held-out pairs over the steps), train.manifest.json
     (figures: heldout_accuracy, heldout_pairs, train_pairs, ...).

Each preference gives one row per speaker: the chosen and the rejected conversation as chat
messages from that speaker's side (samples.reply_messages: their persona as the system prompt,
their turns as `assistant`), the shape the RL policy's prompt + reply has when the model scores it.
The held-out split is by pair_id, seeded by train.seed, so one pair's rows never straddle it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import ui
from ..config import TrainConfig
from ..contract import StageContext, StageResult
from ..errors import UserError
from ..samples import reply_messages
from ..schema import Preference
from ..store import iter_json_lines
from . import train as T
from .train_loop import Job, run_job


def default_data(run_dir: Path) -> Path:
    return Path(run_dir) / "preferences.jsonl"


def read_preferences(path: Path) -> list[Preference]:
    out = []
    for line_no, row in iter_json_lines(path):
        try:
            out.append(Preference.model_validate(row))
        except Exception as error:  # pydantic's message names the field
            first = str(error).splitlines()[1:2] or [str(error)]
            raise UserError(f"{path}:{line_no}: not a Preference record ({first[0].strip()}); the reward model "
                            f"trains on forge generate's preferences.jsonl") from None
    if not out:
        raise UserError(f"{path}: no preference pairs in it; run forge generate (with a critic) first, or give "
                        f"--data FILE")
    return out


def preference_rows(pref: Preference) -> list[dict[str, Any]]:
    """One {chosen, rejected} row of chat messages per speaker of the pair."""
    rows = []
    for speaker, persona in (("user1", pref.user1_persona), ("user2", pref.user2_persona)):
        chosen = [m.model_dump() for m in reply_messages(persona, pref.chosen_turns, speaker)]
        rejected = [m.model_dump() for m in reply_messages(persona, pref.rejected_turns, speaker)]
        rows.append({"pair_id": pref.pair_id, "chosen": chosen, "rejected": rejected})
    return rows


def split(prefs: Sequence[Preference], heldout: float, seed: int) -> tuple[list[Preference], list[Preference]]:
    """(train, held out) by pair_id, seeded; at least one pair on each side when there are two or more."""
    pairs = sorted({p.pair_id for p in prefs})
    random.Random(seed).shuffle(pairs)
    n_out = round(len(pairs) * heldout) if heldout > 0 else 0
    if heldout > 0 and len(pairs) >= 2:
        n_out = min(max(n_out, 1), len(pairs) - 1)
    out = set(pairs[:n_out])
    return [p for p in prefs if p.pair_id not in out], [p for p in prefs if p.pair_id in out]


def fit(rows: list[dict], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """Drop the oldest turns after the persona from both conversations until each fits max_length."""
    shortened = 0
    out = []
    for row in rows:
        cut = False
        new = {**row}
        for key in ("chosen", "rejected"):
            messages = list(row[key])
            while len(T._chat_ids(tokenizer, messages)) > max_length and len(messages) > 2:
                messages.pop(1)
                cut = True
            new[key] = messages
        shortened += cut
        out.append(new)
    return out, shortened


# --- the model -------------------------------------------------------------------------------

def load_reward_base(spec: str, progress: bool = True):
    """The base as a one-output sequence classifier (float32: its score head is trained whole) and its tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from ..lm import load_tokenizer
    from ..models import causal_lm_path

    path = causal_lm_path(spec, progress=progress)
    tokenizer = load_tokenizer(path, padding_side="right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, path


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), bias="none", task_type="SEQ_CLS",
                      modules_to_save=["score"])


class RewardModel:
    """A trained reward model: score(list of chat conversations) -> one float each."""

    def __init__(self, spec: str, folder: Path, progress: bool = False, batch_size: int = 8):
        from peft import PeftModel

        folder = Path(folder)
        adapter = folder / "adapter" if (folder / "adapter").is_dir() else folder
        if not (adapter / "adapter_config.json").is_file():
            raise UserError(f"{folder}: no reward model here; train one with forge train --method reward "
                            f"(or set train.rl.reward_model)")
        base, self.tokenizer, _ = load_reward_base(spec, progress)
        self.model = PeftModel.from_pretrained(base, str(adapter)).eval()
        self.batch_size = batch_size
        self.folder = adapter

    def score(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[float]:
        import torch

        texts = [self.tokenizer.apply_chat_template(list(c), tokenize=False) for c in conversations]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                   add_special_tokens=False)
            with torch.inference_mode():
                out.extend(self.model(**batch).logits[:, 0].float().tolist())
        return out


# --- the stage -------------------------------------------------------------------------------

ACCURACY = "eval_accuracy"


def run(cfg: TrainConfig, context: StageContext, *, base_model: str, seed: int,
        callbacks: Sequence[Any] = ()) -> StageResult:
    """A reward model (LoRA + score head) on preference pairs; `base_model` is the model trained when
    train.model is unset (the recipe's backend.model), `seed` the recipe's global seed."""
    return T.result(cfg, context, _run(cfg, Path(context.run_dir), base_model, seed, context.force,
                                       context.progress, callbacks))


def _run(cfg: TrainConfig, run_dir: Path, base_model: str, seed: int, force: bool, progress: bool,
         callbacks: Sequence[Any]) -> dict[str, Any]:
    spec = cfg.model or base_model
    data = Path(cfg.data) if cfg.data else default_data(run_dir)
    if not data.is_file():
        raise UserError(f"{data}: no preference pairs; run forge generate (with a critic) first, or give --data FILE")
    if cfg.adapter is not None:
        raise UserError("train.adapter: a reward model starts from the base model, not from a chat adapter; "
                        "drop --adapter for --method reward")
    counts: dict[str, int] = {}

    def prepare():
        prefs = read_preferences(data)
        train_prefs, held = split(prefs, cfg.reward.heldout, cfg.seed)
        return train_prefs, held

    def build(prepared, stage, checkpoints):
        from datasets import Dataset
        from trl import RewardConfig, RewardTrainer

        train_prefs, held = prepared
        model, tokenizer, _ = load_reward_base(spec, progress)
        ui.info(f"forge train: reward model on {data} ({len(train_prefs)} pairs, {len(held)} held out), "
                f"LoRA r={cfg.lora.r} + score head, float32")
        train_rows, short_a = fit([r for p in train_prefs for r in preference_rows(p)], tokenizer, cfg.max_length)
        held_rows, short_b = fit([r for p in held for r in preference_rows(p)], tokenizer, cfg.max_length)
        counts.update(train_pairs=len(train_prefs), heldout_pairs=len(held), train_rows=len(train_rows),
                      heldout_rows=len(held_rows), shortened=short_a + short_b)
        common = T._common_args(cfg, checkpoints)
        common["bf16"] = False
        evaluate = bool(held_rows)
        args = RewardConfig(**common, center_rewards_coefficient=0.01,
                            eval_strategy="steps" if evaluate else "no", eval_steps=cfg.logging_steps,
                            per_device_eval_batch_size=cfg.batch_size)
        strip = lambda rows: [{"chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]  # noqa: E731
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(strip(train_rows)),
                                eval_dataset=Dataset.from_list(strip(held_rows)) if evaluate else None,
                                processing_class=tokenizer, peft_config=lora_config(cfg))
        return trainer, tokenizer

    def finish(trainer, history, folder):
        extra: dict[str, Any] = {}
        if trainer.eval_dataset is not None:
            step = trainer.state.global_step
            if not any(ACCURACY in row and row.get("step") == step for row in history):
                metrics = trainer.evaluate()
                history.append({"step": trainer.state.global_step, **metrics})
            final = [row for row in history if ACCURACY in row][-1]
            extra = {"heldout_accuracy": round(final[ACCURACY], 4), "heldout_margin": final.get("eval_margin"),
                     "heldout_loss": final.get("eval_loss")}
        train_acc = [row["accuracy"] for row in history if "accuracy" in row and "loss" in row]
        if train_acc:
            extra["final_train_accuracy"] = train_acc[-1]
        plot_accuracy(history, folder / "reward_accuracy.png",
                      f"reward model: ranking accuracy ({counts.get('heldout_pairs', 0)} held-out pairs)")
        return {**extra, **{f"n_{k}": v for k, v in counts.items()}}

    job = Job(inputs=[data], prepare=prepare, build=build, finish=finish, counts=counts,
              title=f"reward model LoRA r={cfg.lora.r} ({Path(spec).name})",
              summary_keys=(("heldout_accuracy", "held-out accuracy"), ("n_heldout_pairs", "held-out pairs"),
                            ("final_train_accuracy", "train accuracy (last log)")))
    rows = run_job(cfg, run_dir, spec, seed, job, force, progress, callbacks)
    rows["accuracy curve"] = str(T.out_dir(run_dir, cfg) / "reward_accuracy.png")
    return rows


def plot_accuracy(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..store import atomic_open

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    for key, label in (("accuracy", "training batches"), (ACCURACY, "held-out pairs")):
        points = [(r["step"], r[key]) for r in history if key in r and "step" in r]
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 40 else None, linewidth=1.2, label=label)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("chosen scored above rejected")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
