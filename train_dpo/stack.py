"""Train a grid's runs at once: K LoRA adapters over one frozen base model, stacked along the batch.

    poetry run python -m train_dpo.stack --stack_dir results/stacks/a --runs runs.json   # one stack
    poetry run accelerate launch --multi_gpu --num_processes 2 -m train_dpo.stack ...  # DDP inside it
                                          # (on CPU processes: add --use_cpu true to every run's flags)

`runs.json` is a list of train.py flag lists, one per run. Each step feeds one batch of every run, drawn
by that run's own sampler, through the base model once (`train_dpo.lora_stack`); each block gets its own
loss (divergence, beta, loss type), each adapter its own optimizer group (learning rate) and its own
gradient clipping. The summed loss gives each adapter exactly its own gradient, and with dropout off a
stacked run equals the run trained alone (tests/test_stack.py); with LoRA dropout on, the draws differ,
so the runs are equivalent in distribution, not bit for bit.

Runs stack when everything but `PER_RUN` is equal: the base model, the pairs' source, batch size,
epochs, schedule, max length. Checkpoints hold the whole stack (`checkpoint-N/` in the stack folder),
so a killed stack resumes as one. When training ends, the adapters are saved once to `final/` in the
stack folder, then split: each run's output_dir gets a standard PEFT folder, its run_config.json (the
fingerprint a lone run would record), trainer_state.json (its own log history), train/eval/all_results
and tokenizer, so generation, evaluation and the notebook cannot tell a stacked run from a lone one.
"""

from __future__ import annotations

import common.help  # noqa: F401  (first: answers --help before the heavy imports below)

# isort: split
import contextlib
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import PartialState
from accelerate.data_loader import SeedableRandomSampler
from datasets import concatenate_datasets
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from torch.utils.data import BatchSampler, DataLoader
from transformers import set_seed

from common.appendlog import settings_hash
from common.atomic import check_replaceable, write_atomic
from common.cli import ArgParser
from common.errors import InputError, exits_cleanly, writing
from common.lock import output_lock
from train_dpo.data import load_preference_dataset
from train_dpo.fingerprint import RUN_CONFIG, data_sha256, fingerprint_of, model_sha256, run_settings
from train_dpo.length_buckets import bucket_batches, pair_widths
from train_dpo.lora_stack import LoRAStack, write_peft_adapter
from train_dpo.losses import LOSS_TYPES, weighted_fdpo_loss
from train_dpo.train import (
    last_complete_checkpoint,
    load_model_and_tokenizer,
    parse_args,
    prepare_splits,
    record_run,
)
from train_dpo.trainer import FDPOTrainer, GuardedPart

logger = logging.getLogger("train_dpo")

# What may differ between the runs of one stack.
PER_RUN = frozenset({"loss_type", "loss_weights", "divergence", "alpha", "beta", "learning_rate", "seed",
                     "data_seed", "label_smoothing", "divergence_source_sha256",
                     "divergence_values_sha256"})  # fmt: skip
STACK_WEIGHTS, SOURCE_COLUMN, FINAL = "stack_adapters.safetensors", "stack_source", "final"
STACK_RUNS_FILE = "runs.json"  # what a sweep writes into a stack's folder: the runs' flags


def stack_key(script_args, training_args) -> str:
    """Runs with equal keys can train in one stack: all their settings but `PER_RUN` agree."""
    settings = run_settings(script_args, training_args)
    return settings_hash({key: value for key, value in settings.items() if key not in PER_RUN})


def check_stackable(members: list[tuple]) -> None:
    """InputError naming the first setting that keeps these runs out of one stack."""
    first = run_settings(*members[0])
    folders = [Path(training_args.output_dir).resolve() for _, training_args in members]
    if len(set(folders)) < len(folders):
        twice = next(folder for folder in folders if folders.count(folder) > 1)
        raise InputError(f"two runs of a stack write one folder, {twice}: each run needs its own output_dir")
    for script_args, training_args in members:
        if not script_args.use_peft:
            raise InputError(
                "a stack trains LoRA adapters: --use_peft false runs one at a time (--stack_size 1)"
            )
        if training_args.push_to_hub or training_args.group_by_length:
            raise InputError(
                "--push_to_hub and --group_by_length are for runs trained one at a time (--stack_size 1)"
            )
        if training_args.ld_alpha is not None or training_args.use_weighting:
            raise InputError(
                "--ld_alpha and --use_weighting are for runs trained one at a time (--stack_size 1)"
            )
        if not set(training_args.loss_type) <= set(LOSS_TYPES):
            raise InputError(
                f"a stack trains the losses {', '.join(LOSS_TYPES)}, not {training_args.loss_type}"
            )
        other = run_settings(script_args, training_args)
        for key in sorted(set(first) | set(other)):
            if key not in PER_RUN and first.get(key) != other.get(key):
                raise InputError(
                    f"runs {members[0][1].output_dir} and {training_args.output_dir} differ in {key} "
                    f"({first.get(key)!r} vs {other.get(key)!r}): they cannot share a stack"
                )


def check_equal_sizes(sizes: list[int]) -> None:
    """A stack steps every run at once, so each must have equally many training pairs: a run with fewer
    would run out of batches first."""
    if len(set(sizes)) > 1:
        raise InputError(
            f"the runs of a stack train on equally many pairs, these on {sorted(set(sizes))} (--stack_size 1)"
        )


def source_ranges(dataset) -> list[range]:
    """Where each distinct table's pairs lie in the stack's dataset (tables are stored one after another)."""
    column = dataset[SOURCE_COLUMN]
    sizes = [column.count(source) for source in range(max(column) + 1)]
    return [range(sum(sizes[:source]), sum(sizes[: source + 1])) for source in range(len(sizes))]


class StackedBatchSampler:
    """Each step, one batch of every run concatenated in run order, each from the run's own order.

    Run k's order is what its lone Trainer draws: accelerate's seedable random sampler seeded with the
    run's data seed (its seed unless set) plus the epoch, batched as the Trainer batches; with `buckets`,
    the length buckets of `train_dpo.length_buckets` over each run's pair `widths`, every run in the
    bucket of the step. `tables[k]` is where run k's pairs lie in the stack's dataset; all runs have
    equally many.
    """

    def __init__(self, tables: list[range], seeds: list[int], batch_size: int, drop_last: bool,
                 buckets: int = 0, widths: list[list[int]] | None = None):  # fmt: skip
        check_equal_sizes([len(table) for table in tables])  # again after TRL dropped fully truncated pairs
        self.tables, self.seeds, self.run_batch_size, self.drop_last = tables, seeds, batch_size, drop_last
        self.buckets, self.widths = buckets, widths
        self.epoch = 0
        # What accelerate's sharding of batches across processes reads.
        self.batch_size = batch_size * len(tables)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def run_batches(self, run: int):
        """Run `run`'s batches this epoch, as indices into its own table."""
        if self.buckets:
            return bucket_batches(self.widths[run], self.run_batch_size, self.buckets, self.seeds[run],
                                  self.epoch, self.drop_last)  # fmt: skip
        sampler = SeedableRandomSampler(range(len(self.tables[run])), data_seed=self.seeds[run])
        sampler.set_epoch(self.epoch)
        return BatchSampler(sampler, self.run_batch_size, self.drop_last)

    def __iter__(self):
        runs = [self.run_batches(run) for run in range(len(self.tables))]
        for batches in zip(*runs, strict=True):
            yield [self.tables[run][index] for run, batch in enumerate(batches) for index in batch]

    def __len__(self) -> int:
        return len(self.run_batches(0))


class HeldOutBatchSampler:
    """Evaluation: each distinct held-out table in order, every batch given to all K adapters at once; a
    run's metrics are taken from the batches of its own table (`StackedFDPOTrainer.compute_loss`)."""

    def __init__(self, tables: list[range], count: int, batch_size: int):
        self.tables, self.count, self.run_batch_size = tables, count, batch_size
        self.batch_size, self.drop_last = batch_size * count, False  # as accelerate's sharding reads them

    def __iter__(self):
        for table in self.tables:
            for start in range(0, len(table), self.run_batch_size):
                yield list(table[start : start + self.run_batch_size]) * self.count

    def __len__(self) -> int:
        return sum(-(-len(table) // self.run_batch_size) for table in self.tables)


class StackCollator:
    """TRL's collation of the K sub-batches at once, rows reordered into blocks: run k's chosen rows then
    its rejected rows, block after block (TRL puts all chosen rows before all rejected ones), plus the
    table each pair came from."""

    def __init__(self, collator, count: int):
        self.collator, self.count = collator, count

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        pairs = len(features) // self.count
        order = torch.arange(2 * len(features)).view(2, self.count, pairs).transpose(0, 1).reshape(-1)
        batch = {key: value[order] if value.dim() and value.shape[0] == 2 * len(features) else value
                 for key, value in batch.items()}  # fmt: skip
        return {**batch, SOURCE_COLUMN: torch.tensor([feature[SOURCE_COLUMN] for feature in features])}


class StackedFDPOTrainer(FDPOTrainer):
    """FDPOTrainer over a LoRA stack: per-run losses, optimizer groups, clipping, samplers and logs."""

    def __init__(self, *args, runs: list, stack: LoRAStack, sources: dict, **kwargs):
        self.runs, self.stack, self.sources = runs, stack, sources
        super().__init__(*args, **kwargs)
        self.divergences = [run.get_divergence() for run in runs]
        self.run_metrics = [{"train": defaultdict(list), "eval": defaultdict(list)} for _ in runs]
        self.run_tokens, self.run_loss_total = [0] * len(runs), [0.0] * len(runs)
        self.run_norms = [0.0] * len(runs)
        self.unread_losses = [[] for _ in runs]  # training losses on the device, for `run_loss_total`
        self.run_lrs = [run.learning_rate for run in runs]

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """The reference log-probs of each run's pairs computed as its lone run computes them (same batches,
        same shared cache entry), then put together: batched across runs, padding would differ."""
        parts = []
        for index in sorted(set(dataset[SOURCE_COLUMN])):
            part = dataset.filter(lambda source, index=index: source == index, input_columns=SOURCE_COLUMN)
            parts.append(super()._precompute_ref_logps(part, name, batch_size))
        return concatenate_datasets(parts)

    def _loader(self, dataset, batch_sampler) -> DataLoader:
        collate = StackCollator(self.data_collator, len(self.runs))
        loader = DataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate,
                            num_workers=self.args.dataloader_num_workers,
                            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
                            )  # fmt: skip
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> DataLoader:
        tables = source_ranges(self.train_dataset)
        seeds = [run.data_seed if run.data_seed is not None else run.seed for run in self.runs]
        runs = [tables[source] for source in self.sources["train"]]
        widths = None
        if self.args.length_buckets:
            every = pair_widths(self.train_dataset)
            widths = [[every[index] for index in table] for table in runs]
        sampler = StackedBatchSampler(runs, seeds, self._train_batch_size, self.args.dataloader_drop_last,
                                      self.args.length_buckets, widths)  # fmt: skip
        return self._loader(self.train_dataset, sampler)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        return self._loader(
            dataset, HeldOutBatchSampler(source_ranges(dataset), len(self.runs), self.args.eval_batch_size)
        )

    def create_optimizer(self, model=None):
        """One parameter group per run: its adapter, at its learning rate (the schedule scales each)."""
        if self.optimizer is None:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            groups = [{"params": self.stack.parameters_of(k), "lr": run.learning_rate,
                       "weight_decay": self.args.weight_decay}
                      for k, run in enumerate(self.runs)]  # fmt: skip
            self.optimizer = optimizer_cls(groups, **kwargs)
        return self.optimizer

    def _clip_grad_norm(self, model):
        """Each run's gradient clipped by its own norm, as its lone Trainer clips it; returns their norm."""
        norms = [torch.nn.utils.clip_grad_norm_(self.stack.parameters_of(k), self.args.max_grad_norm)
                 for k in range(len(self.runs))]  # fmt: skip
        self.run_norms = norms  # on the device until the next log reads them
        return torch.linalg.vector_norm(torch.stack(norms))

    def _get_learning_rate(self) -> float:
        self.run_lrs = [group["lr"] for group in self.optimizer.param_groups]
        return super()._get_learning_rate()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The sum of the runs' f-DPO losses, each over its own block of the batch."""
        mode = "train" if self.model.training else "eval"
        tables = inputs.pop(SOURCE_COLUMN)
        with self.stack.routed():
            logps, outputs = self.row_logps(model, inputs)
        count, pairs = len(self.runs), logps.shape[0] // (2 * len(self.runs))
        chosen, rejected = logps.view(count, 2, pairs).unbind(1)
        references = [
            inputs[column].to(logps.device).view(count, pairs)
            for column in ("ref_chosen_logps", "ref_rejected_logps")
        ]
        total, self.step_losses = 0.0, []
        for k, run in enumerate(self.runs):
            rows = slice(2 * pairs * k, 2 * pairs * (k + 1))
            logratios = (chosen[k] - references[0][k], rejected[k] - references[1][k])
            loss, chosen_rewards, rejected_rewards = weighted_fdpo_loss(
                logratios, self.divergences[k], run.beta, run.loss_type, run.loss_weights, run.label_smoothing
            )
            total = total + loss
            self.step_losses.append(loss)
            if mode == "eval" and tables[pairs * k].item() != self.sources["test"][k]:
                continue  # another run's held-out pairs
            block_inputs = {key: inputs[key][rows] for key in ("attention_mask", "completion_mask")}
            block_outputs = SimpleNamespace(
                **{key: getattr(outputs, key)[rows] for key in ("entropy", "mean_logits", "is_top1")}
            )
            self._record_metrics(block_inputs, block_outputs, (chosen[k], rejected[k]), logratios,
                                 (chosen_rewards, rejected_rewards),
                                 metrics=self.run_metrics[k][mode])  # fmt: skip
            scale = self.current_gradient_accumulation_steps if mode == "train" else 1
            self.run_metrics[k][mode]["loss"].append(loss.detach() / scale)
            if mode == "train":  # on the device until the next log: int + tensor gives a tensor
                self.run_tokens[k] = self.run_tokens[k] + block_inputs["attention_mask"].sum()
                self.unread_losses[k].append(self.run_metrics[k][mode]["loss"][-1])
        return (total, None) if return_outputs else total

    def recorded_lists(self) -> list[list]:
        """The stack's lists and every run's: metrics, gradient norms, token counts, unread losses."""
        runs = [values for run in self.run_metrics for store in run.values() for values in store.values()]
        return [*super().recorded_lists(), *runs, self.run_norms, self.run_tokens, *self.unread_losses]

    def read_recorded(self) -> None:
        """The recorded values read, then each run's training losses added to its total, in step order."""
        super().read_recorded()
        for k, losses in enumerate(self.unread_losses):
            for loss in losses:
                self.run_loss_total[k] += loss
            losses.clear()

    def guarded_parts(self, model, inputs, loss) -> list[GuardedPart]:
        """Each run apart: its loss over its block of the batch and its adapter."""
        rows = inputs["input_ids"].shape[0] // len(self.runs)
        return [GuardedPart(self.step_losses[k], self.stack.parameters_of(k), first_row=rows * k,
                            label=f" in run {self.run_name_of(k)}", run=k)
                for k in range(len(self.runs))]  # fmt: skip

    def run_name_of(self, run: int | None) -> str:
        return Path(self.runs[run].output_dir).name

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss only: no logits are kept for the stack (compute_metrics does not apply to it)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            return self.compute_loss(model, inputs).detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Each run's own log entry (tagged `run`, kept in the stack's log history), then the stack's.

        The Trainer's loss is what `compute_loss` returns, the sum of the runs' losses; the stack's entry
        (the console line, and the metrics `train()` and `evaluate()` return) gives the mean of the runs'
        entries instead, which reads on the scale of one run's loss.
        """
        self.read_recorded()
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        run_losses = []
        for k, entries in enumerate(self.run_metrics):
            values = entries[mode]
            if not values:
                continue
            entry = {"run": k}
            if losses := values.pop("loss", []):
                # Training: the mean per optimizer step, a step's micro-batches summed (as the Trainer logs).
                steps = round(len(losses) / self.args.gradient_accumulation_steps) if mode == "train" else 0
                entry[f"{prefix}loss"] = sum(losses) / max(1, steps or len(losses))
                run_losses.append(entry[f"{prefix}loss"])
            means = {
                f"{prefix}{name}": sum(v) / len(v) for name, v in values.items() if v and name != "num_tokens"
            }
            entry.update(means)
            if mode == "train":
                entry.update(
                    grad_norm=self.run_norms[k], learning_rate=self.run_lrs[k], num_tokens=self.run_tokens[k]
                )
            entry.update(epoch=self.state.epoch, step=self.state.global_step)
            self.state.log_history.append(entry)
            values.clear()
        if run_losses and f"{prefix}loss" in logs:
            logs[f"{prefix}loss"] = sum(run_losses) / len(run_losses)
        if "train_loss" in logs:  # the summary train() logs last, over the whole training
            logs["train_loss"] = sum(self.run_loss_total) / len(self.runs) / max(1, self.state.global_step)
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """A checkpoint of the stack: every adapter's weights in one file (the base model never changes)."""
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_file(self.stack.state(), str(output_dir / STACK_WEIGHTS), metadata={"format": "pt"})

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        path = Path(resume_from_checkpoint) / STACK_WEIGHTS
        self.stack.load_state(load_file(str(path)), str(path))
        for entry in self.state.log_history:  # restored with the checkpoint's trainer state
            if "num_tokens" in entry and "run" in entry:
                self.run_tokens[entry["run"]] = entry["num_tokens"]


def run_entries(history: list[dict], run: int) -> list[dict]:
    return [
        {key: value for key, value in entry.items() if key != "run"}
        for entry in history
        if entry.get("run") == run
    ]


def build_stack(run_flags: list[list[str]], stack_dir: Path) -> tuple[StackedFDPOTrainer, list]:
    """The stack's trainer over the base model, each run's parsed settings; writes their run_config.json."""
    members = [parse_args(flags) for flags in run_flags]
    check_stackable(members)
    script_args, _ = members[0]
    overrides = [
        "--output_dir",
        str(stack_dir),
        "--run_name",
        stack_dir.name,
        "--precompute_ref_log_probs",
        "true",
    ]
    stack_args = parse_args([*run_flags[0], *overrides])[1]
    set_seed(stack_args.seed)
    model, tokenizer = load_model_and_tokenizer(script_args.model)
    model_hash = model_sha256(model, tokenizer)
    # Runs usually share their pairs: each distinct table is stored once, and `sources` says whose is whose.
    tables, sources = {"train": {}, "test": {}}, {"train": [], "test": []}
    prepared = [
        prepare_splits(load_preference_dataset(script.dataset, script.test_size, training.seed),
                       tokenizer, script, training)
        for script, training in members
    ]  # fmt: skip
    check_equal_sizes([len(data["train"]) for data in prepared])  # before any run_config.json is written
    for (script, training), data in zip(members, prepared, strict=True):
        record_run(
            script, training, fingerprint_of(run_settings(script, training), data_sha256(data), model_hash)
        )
        for split, table in data.items():
            index, _ = tables[split].setdefault(data_sha256({split: table}), (len(tables[split]), table))
            sources[split].append(index)
    if len(sources["test"]) not in (0, len(members)):
        raise InputError("either every run of a stack holds out pairs or none does")
    datasets = {split: concatenate_datasets([table.add_column(SOURCE_COLUMN, [index] * len(table))
                                             for index, table in found.values()]) if found else None
                for split, found in tables.items()}  # fmt: skip
    lora = LoraConfig(r=script_args.lora_r, lora_alpha=script_args.lora_alpha,
                      lora_dropout=script_args.lora_dropout, fan_in_fan_out=True,
                      target_modules=list(script_args.lora_target_modules),
                      task_type="CAUSAL_LM")  # fmt: skip
    stack = LoRAStack(model, len(members), lora)
    for k, (_, training) in enumerate(members):
        stack.seed(k, training.seed)
    trainer = StackedFDPOTrainer(
        model=model, args=stack_args, runs=[training for _, training in members], stack=stack,
        sources=sources,
        train_dataset=datasets["train"], eval_dataset=datasets["test"], processing_class=tokenizer,
    )  # fmt: skip
    return trainer, members


def train_stack(run_flags: list[list[str]], stack_dir: str | Path) -> list[Path]:
    """Train the runs as one stack in `stack_dir` (resuming its last checkpoint), split them into their
    own folders, and return those folders. A stack already finished is only split again."""
    stack_dir = Path(stack_dir)
    trainings = [parse_args(flags)[1] for flags in run_flags]
    outputs = [Path(training.output_dir) for training in trainings]
    main_process = trainings[0].should_save  # under `accelerate launch`, every process trains the stack (DDP)
    finished = (stack_dir / FINAL / "stack.json").is_file()
    with contextlib.ExitStack() as locks:
        if main_process:  # the process that writes holds the folders
            for folder in (stack_dir, *outputs):
                check_replaceable(folder, RUN_CONFIG if folder in outputs else STACK_RUNS_FILE)
                locks.enter_context(output_lock(folder))
        if main_process:
            write_atomic(stack_dir / STACK_RUNS_FILE, json.dumps(run_flags, indent=2))
        if not finished:
            train_locked(run_flags, stack_dir)
        PartialState().wait_for_everyone()  # the state the runs' TrainingArguments set up
        if main_process:
            split_final(stack_dir / FINAL)
    return outputs


def train_locked(run_flags: list[list[str]], stack_dir: Path) -> None:
    """Train the stack and save it to `final/`: the adapters, each run's logs, metrics and settings."""
    trainer, members = build_stack(run_flags, stack_dir)
    checkpoint = last_complete_checkpoint(stack_dir)
    started = time.time()
    with writing(stack_dir):
        result = trainer.train(resume_from_checkpoint=checkpoint)
        evaluation = trainer.evaluate() if trainer.eval_dataset is not None else None
    if not trainer.accelerator.is_main_process:
        return
    runs = [
        run_record(trainer, k, training, result.metrics, evaluation)
        for k, (_, training) in enumerate(members)
    ]
    staging = stack_dir / f".{FINAL}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_file(trainer.stack.state(), str(staging / STACK_WEIGHTS), metadata={"format": "pt"})
    trainer.processing_class.save_pretrained(str(staging / "tokenizer"))
    write_atomic(staging / "lora_config.json", json.dumps(trainer.stack.config.to_dict(), default=list))
    record = {"runs": runs, "base_model": trainer.model.config._name_or_path,
              "train_s": round(time.time() - started, 1),
              "processes": trainer.accelerator.num_processes}  # fmt: skip
    write_atomic(staging / "stack.json", json.dumps(record, indent=2, default=str))
    shutil.rmtree(stack_dir / FINAL, ignore_errors=True)
    os.replace(staging, stack_dir / FINAL)


def run_record(
    trainer: StackedFDPOTrainer, run: int, training, train_metrics: dict, evaluation: dict | None
) -> dict:
    """What a lone run would have left of its training: its metrics and its trainer state, own logs only."""
    entries = run_entries(trainer.state.log_history, run)
    train = {**train_metrics, "train_loss": trainer.run_loss_total[run] / max(1, trainer.state.global_step)}
    held_out = None
    if evaluation is not None:
        last = [entry for entry in entries if "eval_loss" in entry][-1]
        held_out = {key: value for key, value in last.items() if key.startswith("eval_")}
        held_out.update({key: evaluation[key] for key in ("eval_runtime", "eval_samples_per_second")})
        held_out["epoch"] = last["epoch"]
    state = {**asdict(trainer.state), "log_history": entries}
    # The run_config.json the stack wrote for it (its folder is locked meanwhile): the split writes it back,
    # so a run split later from this stack names the settings of the weights it gets, whatever ran since.
    run_config = json.loads((Path(training.output_dir) / RUN_CONFIG).read_text(encoding="utf-8"))
    return {"output_dir": training.output_dir, "train": train, "eval": held_out, "state": state,
            "run_config": run_config}  # fmt: skip


def split_final(final: Path, output_dirs: list[Path] | None = None) -> None:
    """Write runs of a finished stack into their own folders, as a lone run leaves them (idempotent).

    Only the runs in `output_dirs` (default: all of them): a folder may hold a later training of the same
    run with other settings, which a split of this stack, asked for another of its runs, must not roll
    back. Each run gets back the run_config.json the stack recorded, so its fingerprint names its weights.
    """
    record = json.loads((final / "stack.json").read_text(encoding="utf-8"))
    weights = load_file(str(final / STACK_WEIGHTS))
    config = LoraConfig(**json.loads((final / "lora_config.json").read_text(encoding="utf-8")))
    wanted = None if output_dirs is None else {Path(folder).resolve() for folder in output_dirs}
    for k, run in enumerate(record["runs"]):
        output_dir = Path(run["output_dir"])
        if wanted is not None and output_dir.resolve() not in wanted:
            continue
        staging = output_dir / ".final"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            with writing(output_dir):  # a full disk names the run's folder, not a file the copy read
                write_split_run(final, run, k, weights, config, record["base_model"], staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # nothing half-written is left behind


def write_split_run(
    final: Path, run: dict, k: int, weights: dict, config, base_model: str, staging: Path
) -> None:
    """Run k of a stack's `final/` into `staging`, then each file into the run's folder."""
    output_dir = Path(run["output_dir"])
    prefix = f"run{k}/"
    state = {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
    write_peft_adapter(staging, config, state, base_model)
    for path in (final / "tokenizer").iterdir():
        shutil.copy2(path, staging / path.name)
    results = {"train": run["train"], **({"eval": run["eval"]} if run["eval"] else {})}
    for split, metrics in results.items():
        write_atomic(staging / f"{split}_results.json", json.dumps(metrics, indent=4, sort_keys=True))
    combined = {key: value for metrics in results.values() for key, value in metrics.items()}
    write_atomic(staging / "all_results.json", json.dumps(combined, indent=4, sort_keys=True))
    write_atomic(staging / "trainer_state.json", json.dumps(run["state"], indent=2, sort_keys=True))
    if "run_config" in run:  # stacks finished before it was recorded keep the one they wrote
        write_atomic(staging / RUN_CONFIG, json.dumps(run["run_config"], indent=2, default=str))
    for path in sorted(staging.iterdir()):
        os.replace(path, output_dir / path.name)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = ArgParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack_dir", required=True, help="the stack's folder: checkpoints and final/")
    parser.add_argument("--runs", required=True, help="JSON file: a list of train.py flag lists, one per run")
    args = parser.parse_args(argv)
    try:
        run_flags = json.loads(Path(args.runs).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(f"--runs {args.runs}: {error}") from None
    if not (isinstance(run_flags, list) and run_flags and all(isinstance(f, list) for f in run_flags)):
        raise InputError(f"--runs {args.runs}: expected a non-empty list of flag lists")
    for folder in train_stack(run_flags, args.stack_dir):
        logger.info("run saved to %s", folder)


cli = exits_cleanly(main)

if __name__ == "__main__":
    cli()
