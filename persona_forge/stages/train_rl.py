"""`forge train --method rloo`: RL from an SFT adapter against a reward model, with a KL leash and
reward hacking watched (trl's RLOOTrainer; trl 1.16 has no PPOTrainer). `--method grpo` is the same
run with GRPOTrainer (group-normalized advantages, clipped ratio).

In:  prompts from TRAINING conversations only (train.rl.prompts, default corpora/spc/train.jsonl.gz;
     the evaluation split is refused): persona system prompt, earlier turns, the other user's turn
     (samples.next_reply, the shape curate, eval and chat use); the reward model from
     `--method reward` (train.rl.reward_model, default <run_dir>/train/reward); the start adapter
     (--adapter, an SFT adapter; trl keeps a frozen copy of it as the KL reference).
Out: <run_dir>/train/<name>/ (default train/rloo/): adapter/, checkpoints/, log.jsonl, loss.png,
     rl_curves.png (reward total and per part, KL, reply words, grounding and contradiction rates),
     samples.jsonl (replies with their reward parts at every checkpoint), train.manifest.json
     (figures: first/last reward, KL, rates, and `alarms`: reward hacking caught in the log).

Reward per reply = rm_weight * reward model(persona, context, reply)
                 + nli_weight * (max entailment - max contradiction over the persona's sentences)
                 - length_penalty * words beyond length_free.
Every logging step records trl's `reward` (total) and `kl`, and our parts and watch rates
(rlwatch: reward/rm, reward/nli, reward/length, watch/grounding_rate, watch/contradiction_rate,
watch/reply_words). NLI is loaded even at nli_weight 0: the rates are watched either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import rlwatch as W
from .. import ui
from ..config import NLIConfig, TrainConfig
from ..contract import StageContext, StageResult
from ..errors import UserError
from ..resources import data_dir
from ..samples import next_reply
from ..schema import Turn
from ..store import iter_json_lines
from . import train as T
from .train_loop import Job, run_job

TRAIN_SPLIT = ("spc", "train.jsonl.gz")
NO_LEASH = 1e-12  # the beta passed to trl for rl.beta 0


def default_prompts() -> Path:
    return data_dir("corpora").joinpath(*TRAIN_SPLIT)


def reward_model_folder(cfg: TrainConfig, run_dir: Path) -> Path:
    folder = Path(cfg.rl.reward_model) if cfg.rl.reward_model else Path(run_dir) / "train" / "reward"
    return folder / "adapter" if (folder / "adapter").is_dir() else folder


def check_not_eval_split(path: Path, eval_data: Path | None) -> None:
    """Refuse RL prompts from the evaluation split: SPC test, or `eval_data` (the recipe's eval.data)."""
    evaluation = {data_dir("corpora") / "spc" / "test.jsonl.gz"}
    if eval_data:
        evaluation.add(Path(eval_data))
    if any(path.resolve() == e.resolve() for e in evaluation if e.exists()):
        raise UserError(f"train.rl.prompts: {path} is the evaluation split; RL prompts must come from training "
                        f"conversations (default {default_prompts()})")


def read_prompts(path: Path, n: int, position: int, context: int) -> list[dict[str, Any]]:
    """Up to n {prompt (messages), persona} rows, one per conversation, in file order."""
    rows = []
    for line_no, row in iter_json_lines(path):
        try:
            turns = [Turn(**t) for t in row["turns"]]
            personas = {"user1": list(row["user1_persona"]), "user2": list(row["user2_persona"])}
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}:{line_no}: expected a conversation (user1_persona, user2_persona, "
                            f"turns[{{speaker, text}}])") from None
        if len(turns) <= position:
            continue
        persona = personas[turns[position].speaker]
        sample = next_reply(persona, turns, position=position, context=context)
        if sample is None:
            continue
        messages, _ = sample
        rows.append({"prompt": [m.model_dump() for m in messages], "persona": persona})
        if len(rows) == n:
            break
    if not rows:
        raise UserError(f"{path}: no conversation has a reply at turn {position}; lower train.rl.position")
    return rows


def reply_text(completion: Any) -> str:
    return completion[-1]["content"] if isinstance(completion, list) else str(completion)


class PersonaReward:
    """The reward: reward model + NLI faithfulness - length penalty; logs each part and the watch rates."""

    __name__ = "persona_reward"

    def __init__(self, settings, reward_model=None, nli=None):
        self.rl = settings
        self.rm = reward_model
        self.nli = nli
        self.last: list[dict[str, Any]] = []

    def __call__(self, prompts, completions, persona, log_metric: Callable | None = None, **_: Any) -> list[float]:
        rl = self.rl
        replies = [reply_text(c) for c in completions]
        n_words = [W.words(r) for r in replies]
        if self.rm is not None and rl.rm_weight:
            rm = self.rm.score([list(p) + [{"role": "assistant", "content": r}] for p, r in zip(prompts, replies)])
        else:
            rm = [0.0] * len(replies)
        scores = W.nli_scores(self.nli, persona, replies) if self.nli is not None else [(0.0, 0.0)] * len(replies)
        parts = {W.REWARD_RM: [rl.rm_weight * s for s in rm],
                 W.REWARD_NLI: [rl.nli_weight * (e - c) for e, c in scores],
                 W.REWARD_LENGTH: [W.length_part(n, rl.length_penalty, rl.length_free) for n in n_words]}
        total = [sum(values) for values in zip(*parts.values())]
        grounded = [float(e >= rl.grounded_at) for e, _ in scores]
        contradicting = [float(c >= rl.grounded_at) for _, c in scores]
        if log_metric is not None:
            for key, values in parts.items():
                log_metric(key, sum(values) / len(values))
            if self.nli is not None:
                log_metric(W.GROUNDING, sum(grounded) / len(grounded))
                log_metric(W.CONTRADICTING, sum(contradicting) / len(contradicting))
            log_metric(W.WORDS, sum(n_words) / len(n_words))
        self.last = [{"persona": list(pe), "said": p[-1]["content"] if p else "", "reply": r, "reward": t,
                      **{k: v[i] for k, v in parts.items()}, "entail": s[0], "contradict": s[1]}
                     for i, (pe, p, r, t, s) in enumerate(zip(persona, prompts, replies, total, scores))]
        return total


def _sample_saver(reward: PersonaReward, path: Path, n: int):
    from transformers import TrainerCallback

    class SaveSamples(TrainerCallback):
        """At every checkpoint: the latest batch's replies with their reward parts, appended to samples.jsonl."""

        def on_save(self, args, state, control, **kwargs):
            if n and reward.last:
                with open(path, "a", encoding="utf-8") as fh:
                    for row in reward.last[:n]:
                        fh.write(json.dumps({"step": state.global_step, **row}) + "\n")

    return SaveSamples()


def run(cfg: TrainConfig, context: StageContext, *, base_model: str, seed: int,
        nli_config: NLIConfig | None = None, eval_data: Path | None = None, callbacks: Sequence[Any] = (),
        nli: Any = None, extra_rewards: Sequence[Callable] = ()) -> StageResult:
    """RL (rloo or grpo) from train.adapter against the reward model and the NLI. Handed by the caller:
    `base_model` (the recipe's backend.model, when train.model is unset), `seed` (the recipe's global
    seed), `nli_config` (the NLI of the reward; default NLIConfig()), `eval_data` (eval.data, refused
    as RL prompts). `nli` replaces that NLI model and `extra_rewards` are added to the reward (Python
    callables in trl's reward-function form), both for tests and experiments."""
    rows = _run(cfg, Path(context.run_dir), base_model, seed, nli_config or NLIConfig(), eval_data, context.force,
                context.progress, callbacks, nli, extra_rewards)
    return T.result(cfg, context, rows)


def _run(cfg: TrainConfig, run_dir: Path, base_model: str, seed: int, nli_config: NLIConfig,
         eval_data: Path | None, force: bool, progress: bool, callbacks: Sequence[Any], nli: Any,
         extra_rewards: Sequence[Callable]) -> dict[str, Any]:
    rl = cfg.rl
    spec = cfg.model or base_model
    prompts_path = Path(rl.prompts) if rl.prompts else default_prompts()
    check_not_eval_split(prompts_path, eval_data)
    if not prompts_path.is_file():
        raise UserError(f"{prompts_path}: no such prompts file (train.rl.prompts)")
    rm_folder = reward_model_folder(cfg, run_dir) if rl.rm_weight else None
    inputs = [prompts_path]
    if rm_folder is not None:
        if not (rm_folder / "adapter_model.safetensors").is_file():
            raise UserError(f"{rm_folder}: no reward model; run forge train --method reward first, set "
                            f"train.rl.reward_model, or train.rl.rm_weight: 0")
        inputs.append(rm_folder / "adapter_model.safetensors")
    if cfg.adapter is None:
        ui.info(f"forge train: no --adapter: {cfg.method} starts from a fresh LoRA on the base (the reference is the base)")
    reward_holder: dict[str, PersonaReward] = {}

    def prepare():
        return read_prompts(prompts_path, rl.n_prompts, rl.position, rl.context)

    def build(rows, stage, checkpoints):
        import trl
        from datasets import Dataset

        kind = "GRPO" if cfg.method == "grpo" else "RLOO"
        RLConfig, RLTrainer = getattr(trl, f"{kind}Config"), getattr(trl, f"{kind}Trainer")

        loaded = T.load_for_training(spec, cfg, progress)
        rm = None
        if rm_folder is not None:
            from .train_reward import RewardModel

            rm = RewardModel(spec, rm_folder, progress)
            stage.record_model("reward_model", str(rm_folder))
        nli_model = nli
        if nli_model is None:
            from ..nli.base import load_nli

            nli_model = load_nli(nli_config, progress=progress)
        stage.record_model("nli", getattr(nli_model, "describe", lambda: "nli")())
        reward = PersonaReward(rl, rm, nli_model)
        reward_holder["reward"] = reward
        ui.info(f"forge train: {cfg.method} on {len(rows)} prompts from {prompts_path} — {loaded.note}, beta {rl.beta}, "
                f"{rl.num_generations} replies a prompt")
        stage.set_count("prompts", len(rows))
        common = T._common_args(cfg, checkpoints)
        common.pop("max_length")
        # One optimizer step = batch_size prompts x num_generations replies.
        common["per_device_train_batch_size"] = cfg.batch_size * rl.num_generations
        # trl skips the reference (and logs no KL) at beta 0; the watch needs KL, so "no leash" is a
        # vanishing coefficient instead: the reference pass is paid, the penalty is nil.
        args = RLConfig(**common, beta=rl.beta or NO_LEASH, num_generations=rl.num_generations,
                          max_completion_length=rl.max_completion_length, temperature=rl.temperature,
                          log_completions=False, disable_dropout=True)
        peft_config = None if cfg.adapter is not None else T.lora_config(cfg)
        loaded.tokenizer.padding_side = "left"
        trainer = RLTrainer(model=loaded.model, reward_funcs=[reward, *extra_rewards], args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=loaded.tokenizer,
                              peft_config=peft_config)
        trainer.add_callback(_sample_saver(reward, T.out_dir(run_dir, cfg) / "samples.jsonl",
                                           rl.samples_per_checkpoint))
        return trainer, loaded.tokenizer

    def finish(trainer, history, folder):
        found = W.alarms(history, rl.alarm_window, rl.alarm_grounding_drop, rl.alarm_contradiction_rise,
                         rl.alarm_length_drift)
        # Extra reward functions (tests, experiments) get a panel each, as trl logs them.
        others = sorted({k for row in history for k in row if k.startswith("rewards/") and k.endswith("/mean")
                         and k != f"rewards/{PersonaReward.__name__}/mean"})
        W.plot_curves(history, folder / "rl_curves.png",
                      f"{cfg.method.upper()} beta={rl.beta} ({Path(spec).name}): reward vs the leash and the watch",
                      W.CURVES + tuple((k, k.split("/")[1]) for k in others))
        logged = [row for row in history if row.get("reward") is not None]
        extra: dict[str, Any] = {"alarms": found, "logged_steps": len(logged)}
        for key, name in (("reward", "reward"), ("kl", "kl"), (W.GROUNDING, "grounding_rate"),
                          (W.CONTRADICTING, "contradiction_rate"), (W.WORDS, "reply_words"),
                          (W.REWARD_RM, "reward_rm"), (W.REWARD_NLI, "reward_nli"), (W.REWARD_LENGTH, "reward_length")):
            values = [row[key] for row in logged if row.get(key) is not None]
            if values:
                extra[f"first_{name}"] = round(values[0], 4)
                extra[f"last_{name}"] = round(values[-1], 4)
        for alarm in found:
            ui.info(f"forge train: REWARD HACKING ALARM: {alarm}")
        return extra

    job = Job(inputs=inputs, prepare=prepare, build=build, finish=finish,
              title=f"{cfg.method.upper()} beta={rl.beta} LoRA r={cfg.lora.r} ({Path(spec).name})",
              summary_keys=(("first_reward", "first reward"), ("last_reward", "last reward"),
                            ("last_kl", "last KL"), ("first_grounding_rate", "first grounding rate"),
                            ("last_grounding_rate", "last grounding rate"),
                            ("last_contradiction_rate", "last contradiction rate"),
                            ("first_reply_words", "first reply words"), ("last_reply_words", "last reply words")))
    rows = run_job(cfg, run_dir, spec, seed, job, force, progress, callbacks)
    folder = T.out_dir(run_dir, cfg)
    manifest = json.loads((folder / "train.manifest.json").read_text())
    found = manifest.get("figures", {}).get("alarms") or []
    rows["alarms"] = "; ".join(found) if found else "none"
    rows["curves"] = str(folder / "rl_curves.png")
    return rows
