"""`forge train`: LoRA SFT or DPO of the chat model on curated samples, with trl and peft.

In:  <run_dir>/curated/sft.jsonl (rows {"messages": [...]} ending with the assistant's target turn)
     or curated/dpo.jsonl (rows {"prompt": [...], "chosen": [assistant], "rejected": [assistant]}),
     or --data FILE in either shape; optionally a LoRA adapter to start from. --method generator reads
     conversations instead (train_generator.py: the packaged Synthetic-Persona-Chat train split by
     default) and trains generate's persona agent on the requests its `turns` mode sends.
Out: <run_dir>/train/<name>/ (name: the recipe's train.name, else sft / dpo):
     adapter/ (peft adapter + tokenizer; persona_forge.lm.load_chat_model(spec, adapter=...) loads it),
     checkpoints/ (a re-run of the same config resumes from the last one), log.jsonl (one row per
     logged step: step, epoch, loss, lr, ...), loss.png, train.manifest.json (config, data hash, base
     model, package versions, s/step, total seconds, peak memory, final loss), merged/ with --merge.

Loss on the target only: an SFT row becomes trl's conversational prompt/completion form (prompt = every
message but the last, completion = [the last]); trl tokenizes the prompt with the generation prompt
and prompt + completion, and its completion-only loss masks everything before the point where the two
diverge. (`assistant_only_loss` would need `{% generation %}` markers, which SmolLM2's template lacks,
and would also train on the earlier assistant turns of the context, which are the other user's
history, not the target.) tests/test_train.py decodes the unmasked labels to check it.

4-bit QLoRA (bitsandbytes) is used where CUDA is present; without CUDA the base model trains in
float32 with a plain LoRA, and the run says so.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import layout, plots, ui
from ..config import NLIConfig, TrainConfig
from ..contract import StageContext, StageResult
from ..errors import UserError
from ..prompts import library
from ..samples import TURN_PROMPT
from ..store import RunDir, atomic_open, iter_json_lines
from . import train_generator

STAGE = "train"
INPUTS = (layout.training_file("sft"), layout.training_file("dpo"))  # by train.method, or train.data
OUTPUTS = (layout.ADAPTER, "checkpoints", "log.jsonl", layout.LOSS_CURVE, "merged")  # inside train/<name>/
ROLES = ("system", "user", "assistant")


# --- data ------------------------------------------------------------------------------------

def default_data(run_dir: Path, method: str) -> Path:
    if method == "generator":
        return train_generator.default_data()
    return Path(run_dir) / layout.training_file(method)


def out_dir(run_dir: Path, cfg: TrainConfig) -> Path:
    """<run_dir>/train/<name>: train.name, else the method's name."""
    return layout.train_dir(Path(run_dir), cfg.name or cfg.method)


def _messages(value: Any, path: Path, line_no: int, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{path}:{line_no}: `{key}` must be a non-empty list of chat messages")
    out = []
    for i, message in enumerate(value):
        if (not isinstance(message, dict) or message.get("role") not in ROLES
                or not isinstance(message.get("content"), str)):
            raise UserError(f"{path}:{line_no}: {key}[{i}] is not a chat message "
                            f"{{\"role\": system|user|assistant, \"content\": text}}")
        out.append({"role": message["role"], "content": message["content"]})
    return out


def read_sft(path: Path) -> list[dict[str, list[dict[str, str]]]]:
    """SFT rows as trl's conversational prompt/completion: the last (assistant) message is the target."""
    rows = []
    for line_no, row in iter_json_lines(path):
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_no}: expected an object with `messages`")
        if "messages" in row:
            messages = _messages(row["messages"], path, line_no, "messages")
            prompt, completion = messages[:-1], messages[-1:]
        elif "prompt" in row and "completion" in row:
            prompt = _messages(row["prompt"], path, line_no, "prompt")
            completion = _messages(row["completion"], path, line_no, "completion")
        else:
            hint = " (that is a DPO row: pass --dpo)" if "chosen" in row else ""
            raise UserError(f"{path}:{line_no}: an SFT row needs `messages` (ending with the assistant's "
                            f"target){hint}")
        if completion[-1]["role"] != "assistant" or not completion[-1]["content"].strip():
            raise UserError(f"{path}:{line_no}: the last message must be the assistant's (non-empty) target")
        if not prompt:
            raise UserError(f"{path}:{line_no}: no prompt before the target; give at least one message before it")
        rows.append({"prompt": prompt, "completion": completion})
    if not rows:
        raise UserError(f"{path}: no samples in it; run forge curate first or give --data FILE")
    return rows


def read_dpo(path: Path) -> list[dict[str, list[dict[str, str]]]]:
    rows = []
    for line_no, row in iter_json_lines(path):
        if not isinstance(row, dict) or not all(k in row for k in ("prompt", "chosen", "rejected")):
            raise UserError(f"{path}:{line_no}: a DPO row needs `prompt` (messages), `chosen` and `rejected` "
                            f"(each [{{\"role\": \"assistant\", \"content\": ...}}])")
        prompt = _messages(row["prompt"], path, line_no, "prompt")
        chosen = _messages(row["chosen"], path, line_no, "chosen")
        rejected = _messages(row["rejected"], path, line_no, "rejected")
        for key, answer in (("chosen", chosen), ("rejected", rejected)):
            if answer[-1]["role"] != "assistant":
                raise UserError(f"{path}:{line_no}: `{key}` must end with an assistant message")
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    if not rows:
        raise UserError(f"{path}: no preference pairs in it; run forge curate first or give --data FILE")
    return rows


def fit_rows(rows: list[dict], tokenizer, max_length: int, answers: Sequence[str]) -> tuple[list[dict], int]:
    """Drop the oldest context turns (never the system persona, the last prompt turn or the answers)
    until each row fits in max_length tokens; returns (rows, how many were shortened)."""
    shortened = 0
    out = []
    for row in rows:
        prompt = list(row["prompt"])
        longest = max(len(_chat_ids(tokenizer, prompt + row[key])) for key in answers)
        cut = False
        while longest > max_length:
            first = 1 if prompt[0]["role"] == "system" else 0
            if len(prompt) - first <= 1:
                break  # only the turn being answered is left: trl truncates the end
            prompt.pop(first)
            cut = True
            longest = max(len(_chat_ids(tokenizer, prompt + row[key])) for key in answers)
        shortened += cut
        out.append({**row, "prompt": prompt})
    return out, shortened


def _chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


# --- model -----------------------------------------------------------------------------------

@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    path: str
    quantized: bool
    note: str


def wants_4bit(cfg: TrainConfig) -> tuple[bool, str]:
    """Whether to load the base in 4 bits, and what to tell the user about it."""
    import torch

    if cfg.quantize == "none":
        return False, "LoRA (quantize: none)"
    if torch.cuda.is_available():
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            return False, "LoRA (bitsandbytes is not installed: pip install bitsandbytes for 4-bit QLoRA)"
        return True, "4-bit QLoRA (bitsandbytes nf4, CUDA)"
    if cfg.quantize == "4bit":
        return False, "no CUDA here: 4-bit QLoRA needs a GPU, so this is a plain LoRA run"
    return False, "LoRA on CPU (no CUDA, so no 4-bit QLoRA)"


def load_for_training(spec: str, cfg: TrainConfig, progress: bool = True) -> Loaded:
    import torch
    from transformers import AutoModelForCausalLM

    from ..lm import load_tokenizer
    from ..models import causal_lm_path

    path = causal_lm_path(spec, progress=progress)
    four_bit, note = wants_4bit(cfg)
    # The base is frozen, so its weights can be bf16; peft keeps the LoRA weights in float32.
    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if uses_bf16(cfg) else torch.float32}
    if four_bit:
        from transformers import BitsAndBytesConfig

        kwargs = {"quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16), "dtype": torch.bfloat16, "device_map": {"": 0}}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if four_bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    tokenizer = load_tokenizer(path, padding_side="right")
    if cfg.adapter is not None:
        from peft import PeftModel

        from ..lm import check_adapter

        model = PeftModel.from_pretrained(model, str(check_adapter(cfg.adapter)), is_trainable=True)
    return Loaded(model, tokenizer, path, four_bit, note)


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), bias="none", task_type="CAUSAL_LM")


# --- callbacks: progress, live log -------------------------------------------------------------

def _callbacks(progress: bool, log_path: Path):
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        """A rich bar over the optimizer steps, its description carrying the latest loss; the log
        rows go to log.jsonl as they come (rewritten whole from the trainer's history at the end)."""

        def __init__(self):
            self.bar = None
            self.task = None
            self.start_step = 0
            self.loss = None

        def on_train_begin(self, args, state, control, **kwargs):
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            # (On a resume the checkpoint's state is loaded after this call: run() knows the step.)
            if progress:
                self.bar = Bar(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), TextColumn("eta"),
                               TimeRemainingColumn(), console=ui.console, disable=ui.console.quiet)
                self.bar.start()
                self.task = self.bar.add_task("training", total=state.max_steps, completed=self.start_step,
                                              loss="")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                self.loss = logs["loss"]
                if self.bar is not None:
                    self.bar.update(self.task, loss=f"loss {self.loss:.4f}")
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        def on_train_end(self, args, state, control, **kwargs):
            self.close()

        def close(self):
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return Progress()


def _write_log(path: Path, history: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w") as fh:
        for row in history:
            fh.write(json.dumps(row) + "\n")


def plot_loss(history: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = plots.pyplot()
    points = [(row["step"], row["loss"]) for row in history if "loss" in row and "step" in row]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=110)
    if points:
        ax.plot(*zip(*points), marker="o" if len(points) < 40 else None, linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    plots.save(fig, path)


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (trainer_state.json is written last)."""
    if not folder.is_dir():
        return None
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
            and p.name.split("-")[-1].isdigit()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def train_resuming(trainer, checkpoints: Path, log_path: Path, progress: bool,
                   callbacks: Sequence[Any]) -> tuple[Path | None, int, float]:
    """Run `trainer` from the last complete checkpoint in `checkpoints` (if any), with the live bar and
    log.jsonl in place of trl's printer; returns (the checkpoint resumed from, steps this run, seconds)."""
    resume = last_checkpoint(checkpoints)
    live = _callbacks(progress, log_path)
    # log.jsonl restarts from what the checkpoint saw; later rows were lost with the killed run.
    resumed_state = json.loads((resume / "trainer_state.json").read_text()) if resume else {}
    live.start_step = resumed_state.get("global_step", 0)
    _write_log(log_path, resumed_state.get("log_history", []))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints each log dict; our bar shows the loss
    trainer.add_callback(live)
    for callback in callbacks:
        trainer.add_callback(callback)
    if resume is not None:
        ui.info(f"resuming from {resume}")
    train_started = time.time()
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        live.close()
    return resume, trainer.state.global_step - live.start_step, time.time() - train_started


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024 if os.uname().sysname == "Linux" else 1 / (1024 * 1024)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, 1)


# --- the stage -------------------------------------------------------------------------------

def stage_config(cfg: TrainConfig, spec: str, seed: int, prompts_dir: Path | None = None) -> dict[str, Any]:
    """The config hash: train's section, the base model, the recipe's global `seed` (and for the
    generator method the turn prompt its rows are rendered with, from `prompts_dir`)."""
    config = {"train": cfg.identity(), "model": spec, "seed": seed}
    if cfg.method == "generator":  # its rows are rendered with generate's turn prompt
        config["prompts"] = {TURN_PROMPT: library(prompts_dir).ref(TURN_PROMPT).hash}
    return config



def prepare_process(threads: int | None, seed: int) -> int:
    """Torch threads set, library chatter quieted and the seed fixed, before any training loads a
    model (every training stage does this); returns the thread count."""
    from ..hardware import set_torch_threads

    used = set_torch_threads(threads)
    ui.quiet_libraries(ui.verbosity() <= 0)
    import datasets
    import transformers

    if ui.verbosity() <= 0:
        import warnings

        datasets.disable_progress_bars()
        # transformers 5 warns about its own renamed arguments, which trl still passes.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
    transformers.set_seed(seed)
    return used

def run(cfg: TrainConfig, context: StageContext, *, base_model: str, seed: int, prompts_dir: Path | None = None,
        nli_config: NLIConfig | None = None, eval_data: Path | None = None, merge: bool = False,
        callbacks: Sequence[Any] = (), folder: Path | None = None) -> StageResult:
    """Train (or resume, or find done) the adapter in <run_dir>/train/<name>/ (or `folder`: forge train
    --style puts each style's in <run_dir>/adapters/<style>/). Handed by the caller:
    `base_model`, the model trained when train.model is unset (the recipe's backend.model); `seed`, the
    recipe's global seed (in the config hash); `prompts_dir` (the generator method's turn prompt); for
    rloo/grpo `nli_config` (the NLI of the reward) and `eval_data` (eval.data: RL prompts may not come
    from it). The result's manifest is train/<name>/train.manifest.json."""
    if cfg.method == "reward":  # the RLHF half lives in its own modules (train_reward, train_rl)
        from . import train_reward

        return train_reward.run(cfg, context, base_model=base_model, seed=seed, callbacks=callbacks)
    if cfg.method in ("rloo", "grpo"):
        from . import train_rl

        return train_rl.run(cfg, context, base_model=base_model, seed=seed, nli_config=nli_config,
                            eval_data=eval_data, callbacks=callbacks)
    rows = _run(cfg, Path(context.run_dir), base_model, seed, prompts_dir, context.force, merge, context.progress,
                callbacks, folder)
    return result(cfg, context, rows, folder)


def result(cfg: TrainConfig, context: StageContext, rows: dict[str, Any], folder: Path | None = None) -> StageResult:
    """The StageResult of a training run: its manifest lives in train/<name>/ (or `folder`), its output is that folder."""
    folder = Path(folder) if folder is not None else out_dir(context.run_dir, cfg)
    return StageResult.read(STAGE, rows, context.run_dir, [str(folder.relative_to(context.run_dir))],
                            manifest_dir=folder)


def _run(cfg: TrainConfig, run_dir: Path, base_model: str, seed: int, prompts_dir: Path | None, force: bool,
         merge: bool, progress: bool, callbacks: Sequence[Any], folder: Path | None = None) -> dict[str, Any]:
    spec = cfg.model or base_model
    data = Path(cfg.data) if cfg.data else default_data(run_dir, cfg.method)
    if not data.is_file():
        raise UserError(f"{data}: no training data; run forge curate first, or give --data FILE")
    folder = Path(folder) if folder is not None else out_dir(run_dir, cfg)
    rundir = RunDir(folder)
    config = stage_config(cfg, spec, seed, prompts_dir)
    previous = rundir.manifest(STAGE)
    changed = rundir.check(STAGE, config, [data], force)
    if previous is not None and previous.status == "done" and not changed \
            and (folder / "adapter" / "adapter_config.json").is_file():
        rows = _summary(folder, previous.figures, "already trained (same config and data)")
        if merge and not (folder / "merged" / "config.json").is_file():
            _merge(spec, folder, progress)
            rows["merged"] = str(folder / "merged")
        return rows

    started = time.time()
    if cfg.method == "generator":
        prompts = library(prompts_dir)

        def reader(path: Path) -> list[dict]:
            return train_generator.read_rows(path, cfg.generator, cfg.seed, prompts)
    else:
        reader = read_dpo if cfg.method == "dpo" else read_sft
    raw_rows = reader(data)  # a malformed file fails here, before a model is loaded or a manifest written
    stage = rundir.begin(STAGE, config, [data], OUTPUTS, force)
    threads = prepare_process(cfg.threads, cfg.seed)
    loaded = load_for_training(spec, cfg, progress)
    if not loaded.quantized:
        loaded.note += ", base weights in bf16" if uses_bf16(cfg) else ", float32"
    if not uses_checkpointing(cfg):
        loaded.note += ", no activation checkpointing"
    ui.info(f"forge train: {cfg.method} on {data} — {loaded.note}")
    answers = ("chosen", "rejected") if cfg.method == "dpo" else ("completion",)
    rows, shortened = fit_rows(raw_rows, loaded.tokenizer, cfg.max_length, answers)
    stage.record_model("base", spec)
    if cfg.adapter is not None:
        stage.record_model("start_adapter", str(cfg.adapter))
    stage.set_count("samples", len(rows))
    stage.set_count("shortened", shortened)
    stage.save()

    checkpoints = folder / "checkpoints"
    log_path = folder / "log.jsonl"
    trainer = _trainer(cfg, loaded, rows, checkpoints)
    resume, steps_this_run, train_seconds = train_resuming(trainer, checkpoints, log_path, progress, callbacks)
    state = trainer.state
    history = [row for row in state.log_history]
    _write_log(log_path, history)
    plot_loss(history, folder / layout.LOSS_CURVE,
              f"{cfg.method.upper()} LoRA r={cfg.lora.r} on {len(rows)} samples ({Path(spec).name})")

    adapter = folder / "adapter"
    tmp = folder / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model = trainer.model
    model.save_pretrained(str(tmp), selected_adapters=["default"])
    loaded.tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(adapter, ignore_errors=True)
    os.replace(tmp, adapter)

    losses = [row["loss"] for row in history if "loss" in row]
    figures = {
        "steps": state.global_step, "steps_this_run": steps_this_run,
        "resumed_from": resume.name if resume else None,
        "epochs": round(float(state.epoch or 0), 3),
        "s_per_step": round(train_seconds / steps_this_run, 3) if steps_this_run else None,
        "train_seconds": round(train_seconds, 1), "total_seconds": round(time.time() - started, 1),
        "peak_rss_mb": peak_rss_mb(), "first_loss": losses[0] if losses else None,
        "final_loss": losses[-1] if losses else None, "threads": threads, "quantized": loaded.quantized,
        "mode": loaded.note, "trainable_parameters": _trainable(model),
    }
    import torch

    if torch.cuda.is_available():
        figures["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    del trainer, model, loaded
    if merge:
        _merge(spec, folder, progress)
    manifest = stage.finish(**figures)
    return _summary(folder, manifest.figures, "trained")


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _common_args(cfg: TrainConfig, output: Path) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(output), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_ratio, lr_scheduler_type="linear",
        logging_steps=cfg.logging_steps, logging_first_step=True, save_strategy="steps",
        save_steps=cfg.save_steps, save_total_limit=2, report_to="none", disable_tqdm=True, seed=cfg.seed,
        data_seed=cfg.seed, bf16=cuda and uses_bf16(cfg), use_cpu=not cuda, dataloader_num_workers=0,
        dataloader_pin_memory=cuda, max_length=cfg.max_length, activation_checkpointing=uses_checkpointing(cfg),
    )


def uses_bf16(cfg: TrainConfig) -> bool:
    """Whether the frozen base model is held in bfloat16 (plus autocast on CUDA): asked for, or
    (auto) on CUDA and on a CPU that multiplies bf16 in hardware. On this machine's AMX CPU it cut
    a step from 2.23 s to 1.63 s with the same losses (docs/train.md); a CPU without it would
    emulate bf16 and run slower, so it stays float32 there."""
    import torch

    from ..hardware import native_bf16

    if cfg.precision != "auto":
        return cfg.precision == "bf16"
    return torch.cuda.is_available() or native_bf16()


def uses_checkpointing(cfg: TrainConfig) -> bool:
    """Activation checkpointing trades a second forward pass for memory. trl turns it on by
    default; on CPU, with RAM to spare for a small model, recomputing cost 27% of every step."""
    import torch

    if cfg.checkpointing != "auto":
        return cfg.checkpointing == "on"
    return torch.cuda.is_available()


def _trainer(cfg: TrainConfig, loaded: Loaded, rows: list[dict], checkpoints: Path):
    from datasets import Dataset

    dataset = Dataset.from_list(rows)
    peft_config = None if cfg.adapter is not None else lora_config(cfg)
    if cfg.method == "dpo":
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**_common_args(cfg, checkpoints), beta=cfg.beta)
        return DPOTrainer(model=loaded.model, args=args, train_dataset=dataset,
                          processing_class=loaded.tokenizer, peft_config=peft_config)
    from trl import SFTConfig, SFTTrainer

    # Batches of like lengths waste less compute on padding.
    args = SFTConfig(**_common_args(cfg, checkpoints), completion_only_loss=True, packing=False,
                     train_sampling_strategy="group_by_length")
    return SFTTrainer(model=loaded.model, args=args, train_dataset=dataset, processing_class=loaded.tokenizer,
                      peft_config=peft_config)


def _merge(spec: str, folder: Path, progress: bool) -> None:
    """The base model with the adapter folded in, as a plain model folder (no peft needed to load it)."""
    from ..lm import load_chat_model

    model, tokenizer = load_chat_model(spec, adapter=folder / "adapter", progress=progress, merge=True)
    tmp = folder / ".merged.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    shutil.rmtree(folder / "merged", ignore_errors=True)
    os.replace(tmp, folder / "merged")


def _summary(folder: Path, figures: dict[str, Any], status: str) -> dict[str, Any]:
    rows: dict[str, Any] = {"status": status, "adapter": str(folder / "adapter")}
    for key, label in (("steps", "steps"), ("epochs", "epochs"), ("first_loss", "first loss"),
                       ("final_loss", "final loss"), ("s_per_step", "s/step"), ("total_seconds", "total seconds"),
                       ("peak_rss_mb", "peak RSS (MB)"), ("resumed_from", "resumed from"), ("mode", "mode")):
        if figures.get(key) is not None:
            rows[label] = figures[key]
    rows["loss curve"] = str(folder / layout.LOSS_CURVE)
    if (folder / "merged" / "config.json").is_file():
        rows["merged"] = str(folder / "merged")
    return rows
