"""TRL's DPOTrainer with the paper's f-divergences, in `compute_loss`.

TRL 1.16 does the rest: tokenization (EOS appended to each answer), truncation, collation, the fused
LM head that scores completion tokens without materialising the logits, precomputed or PEFT
reference log-probs, and metric logging. `compute_loss` takes the sequence log-probs of one forward
pass over TRL's batch and hands the log-ratios to `train_dpo.losses.fdpo_loss`; its `rewards/*`
metrics then carry the divergence-aware implicit reward beta * f'(u) (TRL's own is beta * log u
whatever the divergence). On the CPU, where TRL's fused head projects every position (only its
Triton kernel skips the prompt and padding), `row_logps` runs the model's body and projects only
the positions that score a completion token (`train_dpo.logps`). The other overrides add what TRL
lacks: a reference cache shared by the runs of a sweep, a guard against non-finite steps, and
length-grouped batches.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
from datasets import Dataset
from datasets.fingerprint import Hasher
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import DPOConfig, DPOTrainer

import config
from common.atomic import atomic_file
from common.cli import check_field_types
from common.errors import TrainingDiverged
from common.secrets import PicklesNoSecrets
from train_dpo.divergences import Divergence, available, get_divergence
from train_dpo.length_buckets import LengthBucketSampler, pair_widths
from train_dpo.logps import body_and_head, completion_logps
from train_dpo.losses import LOSS_TYPES, weighted_fdpo_loss

logger = logging.getLogger(__name__)

# Every loss_type TRL 1.16's DPOTrainer computes. Checked here because TRL itself only refuses an
# unknown one at the first training step.
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")  # fmt: skip

# With skip_nonfinite_batches, a run that skipped more than this share of its optimizer steps has failed:
# its weights come from too few steps, whatever its metrics say.
MAX_SKIPPED_SHARE = 0.5
REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")  # where TRL's collator finds precomputed ones
NOT_MODEL_INPUTS = ("completion_mask", *REF_COLUMNS)  # batch keys the model's forward does not take


def model_inputs(inputs: dict) -> dict:
    """The batch's keys the model's forward takes (TRL's batch also carries masks and reference columns)."""
    return {key: value for key, value in inputs.items() if key not in NOT_MODEL_INPUTS}


def read_to_host(lists: list[list]) -> None:
    """Replace the tensors in `lists` by their Python numbers, in place: one transfer per device and dtype.

    Each tensor becomes what `.item()` gives, so means taken afterwards are those of values read one by one.
    """
    found: dict[tuple, list[tuple[list, int]]] = {}
    for values in lists:
        for index, value in enumerate(values):
            if isinstance(value, torch.Tensor):
                found.setdefault((value.device, value.dtype), []).append((values, index))
    for places in found.values():
        numbers = torch.stack([values[index].detach().reshape(()) for values, index in places]).tolist()
        for (values, index), number in zip(places, numbers, strict=True):
            values[index] = number


def resolve_hardware_defaults(args) -> None:
    """Fill a training config's unset bf16, tf32 and report_to as the study's runs want them.

    TRL turns bf16 on everywhere, CPU included; here bf16 and TF32 are on only on GPUs that have them. W&B
    reports only when it is configured (an API key, or a WANDB_MODE other than disabled), which then
    decides online or offline. Shared by FDPOConfig and the online-RL runs' config (train_dpo/rloo.py).
    """
    gpu = torch.cuda.is_available()
    if args.bf16 is None:
        args.bf16 = gpu and torch.cuda.is_bf16_supported()
    if args.bf16 and not gpu and not args.use_cpu:  # else transformers' "setup doesn't support bf16/gpu"
        raise ValueError("--bf16 true without a GPU needs --use_cpu true (bf16 autocast on the CPU)")
    if args.tf32 is None and gpu and torch.cuda.get_device_capability()[0] >= 8:
        args.tf32 = True
    if args.report_to is None:
        mode = os.environ.get("WANDB_MODE", "")
        configured = mode != "disabled" and (os.environ.get("WANDB_API_KEY") or mode)
        args.report_to = "wandb" if configured else "none"


@dataclass
class FDPOConfig(PicklesNoSecrets, DPOConfig):
    """DPOConfig plus the f-divergence, with the study's defaults where TRL's differ.

    TRL defaults to bf16 everywhere, gradient checkpointing and max_length 1024; the study trained
    GPT-2 in fp32 with max length 256 and batch 8. Here bf16 and TF32 are on only on GPUs that have them.
    Truncation is TRL's: each prompt + answer cut to `max_length` keeping its start (`truncation_mode`).
    """

    divergence: str = field(
        default="reverse_kl",
        metadata={"help": f"f-divergence constraint: {', '.join(available())} (reverse_kl = standard DPO)."},
    )
    alpha: float | None = field(
        default=None,
        metadata={"help": "alpha in (0, 1) of the alpha-divergence, f'(u) = (1 - u^-alpha)/alpha."},
    )
    max_length: int | None = field(
        default=config.MAX_LENGTH, metadata={"help": "Prompt + completion tokens."}
    )
    per_device_train_batch_size: int = field(default=config.BATCH_SIZE, metadata={"help": "Pairs per step."})
    per_device_eval_batch_size: int = field(
        default=config.BATCH_SIZE, metadata={"help": "Pairs per eval step."}
    )
    activation_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 autocast over fp32 weights. Default: on for GPUs with bf16, off on CPU (the study "
            "trained in fp32; pass false to match it bit for bit)."
        },
    )
    tf32: bool | None = field(
        default=None,
        metadata={"help": "TF32 matrix products for the fp32 parts. Default: on for GPUs that have it."},
    )
    learning_rate: float = field(
        default=1e-4, metadata={"help": "The study: 1e-4 sigmoid/hinge, 1e-5 f-div."}
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the preference pairs."})
    logging_steps: float = field(default=10, metadata={"help": "Log every this many optimizer steps."})
    ref_logps_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder where the reference log-probs of the training pairs are stored and reused by "
            "every run with the same reference model and pairs (a sweep computes them once). Implies "
            "precompute_ref_log_probs."
        },
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batch pairs of similar length (shuffled in groups of 50 batches) for less padding; "
            "default: batches drawn uniformly, as the study did."
        },
    )
    length_buckets: int = field(
        default=0,
        metadata={
            "help": "Draw each batch from one of this many buckets of pairs of similar length, every run "
            "of a stack from the same bucket at each step (train_dpo/length_buckets.py), for less padding; "
            "0: batches drawn uniformly, as the study did."
        },
    )
    skip_nonfinite_batches: bool = field(
        default=False,
        metadata={
            "help": "On a non-finite loss or gradient, drop that batch's gradients and go on (default: stop "
            "the run, keeping the last good checkpoint)."
        },
    )
    report_to: Union[None, str, list[str]] = field(  # noqa: UP007 (HfArgumentParser needs typing.Union)
        default=None,
        metadata={"help": "Integrations to log to (default: wandb when W&B is configured, else none)."},
    )

    def __post_init__(self):
        check_field_types(self)  # a YAML value reaches the dataclass unconverted
        resolve_hardware_defaults(self)
        if self.f_divergence_type not in ("reverse_kl", None):  # our loss ignores it, whatever --divergence
            raise ValueError("set the divergence with --divergence, not TRL's --f_divergence_type")
        losses = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        not_trl = [name for name in losses if name not in TRL_LOSS_TYPES]
        if not_trl or not losses:
            raise ValueError(
                f"--loss_type: unknown loss type {', '.join(not_trl) or '(none given)'}; choose from: "
                f"{', '.join(TRL_LOSS_TYPES)}"
            )
        unknown = [name for name in losses if name not in LOSS_TYPES]
        if self.divergence != "reverse_kl" and unknown:
            raise ValueError(
                f"loss_type {unknown} has no f-divergence form; with --divergence {self.divergence} use one "
                f"of: {', '.join(LOSS_TYPES)}"
            )
        if self.divergence != "reverse_kl" and (self.ld_alpha is not None or self.use_weighting):
            raise ValueError(
                f"--ld_alpha and --use_weighting are TRL's, for reverse_kl only, not '{self.divergence}'"
            )
        if self.divergence == "alpha" and self.alpha is None:
            raise ValueError("--divergence alpha needs --alpha in (0, 1)")
        if self.divergence != "alpha" and self.alpha is not None:
            raise ValueError(f"--alpha is only used with --divergence alpha, not '{self.divergence}'")
        if self.ref_logps_cache:
            self.precompute_ref_log_probs = True
            # The fill is forward passes only: batches of 64 pairs, whatever the training batch.
            self.precompute_ref_batch_size = self.precompute_ref_batch_size or 64
        # An unknown name or an alpha outside (0, 1) fails here, before any model is loaded.
        divergence = self.get_divergence()
        if not math.isfinite(self.beta):  # nan and inf would train on a nan loss
            raise ValueError(f"--beta must be a finite number, got {self.beta}")
        if self.beta <= 0:
            raise ValueError(f"--beta must be > 0, got {self.beta}")
        if self.length_buckets < 0:
            raise ValueError(f"--length_buckets must be >= 0 (0: off), got {self.length_buckets}")
        if self.length_buckets and self.group_by_length:
            raise ValueError("--length_buckets and --group_by_length each choose the batches: set one")
        if self.output_dir is None:
            self.run_name = self.run_name or run_name(divergence, losses[0], self.beta)
            self.output_dir = str(config.RESULTS_DIR / self.run_name)
        super().__post_init__()

    def get_divergence(self) -> Divergence:
        return get_divergence(self.divergence, alpha=self.alpha)


def format_beta(beta: float) -> str:
    """The study's spelling of beta in run names: 10, 1, 5e-1, 1e-1 (else plain decimals)."""
    if float(beta).is_integer():
        return str(int(beta))
    mantissa, exponent = f"{beta:.0e}".split("e")
    if float(f"{mantissa}e{exponent}") == beta:
        return f"{mantissa}e{int(exponent)}"
    return f"{beta:g}"


def run_name(divergence: Divergence, loss_type: str, beta: float) -> str:
    """Run names as the study's: gpt_imdb_sigmoid_beta1e-1, gpt_imdb_jsd_beta1, gpt_imdb_alpha03_beta1."""
    tag = loss_type if divergence.name == "reverse_kl" else divergence.name
    if divergence.name != "reverse_kl" and loss_type != "sigmoid":
        tag = f"{tag}_{loss_type}"
    return f"gpt_imdb_{tag}_beta{format_beta(beta)}"


@dataclass
class GuardedPart:
    """A run's share of a training step: its loss, its parameters and its batch's first row, what names it
    in a message (empty for a lone run) and its index in a stack (None for a lone run)."""

    loss: torch.Tensor
    parameters: list[torch.nn.Parameter]
    first_row: int
    label: str = ""
    run: int | None = None


class FDPOTrainer(DPOTrainer):
    """DPOTrainer whose `sigmoid`/`hinge` losses use f'(u) of the configured divergence."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.divergence = self.args.get_divergence()
        # TRL's own loss for what `fdpo_loss` does not cover (its other loss types, LD-DPO, WPO weights,
        # MoE auxiliary losses); FDPOConfig allows those with reverse KL only.
        self.trl_computes_loss = (
            not set(self.loss_types) <= set(LOSS_TYPES)
            or self.ld_alpha is not None
            or self.use_weighting
            or self.aux_loss_enabled
        )

    # On the CPU, project only the positions that score a completion token (`completion_logps`);
    # False: TRL's fused head there too, which projects every position and masks.
    completion_only_logits = True

    def row_logps(self, model, inputs) -> tuple[torch.Tensor, object]:
        """Summed log-prob of each row's completion, from one forward pass over the batch.

        `completion_mask` marks the answer tokens (EOS included). Per-token log-probs are zero where the
        next token is not an answer token; the output also carries the entropy, mean logit and top-1
        flags TRL's metrics read. On a GPU, TRL's fused LM head, whose Triton kernel projects only the
        answer positions. On the CPU that head projects every position and masks, so the model's body
        runs alone and `completion_logps` projects the answer positions only, with TRL's formula (its
        numbers and gradients, tested); a model whose body cannot be called apart (`body_and_head`)
        keeps the fused head.
        Returns (one log-prob per row, the output: fields of shape (rows, T - 1)).
        """
        completion_mask = inputs["completion_mask"]
        parts = None
        if self.completion_only_logits and completion_mask.device.type == "cpu":
            parts = body_and_head(model)
        if parts is not None:
            # The body is called past the model's forward, which is where accelerate applies autocast.
            with self.accelerator.autocast():
                outputs = completion_logps(*parts, model_inputs(inputs), completion_mask)
            return outputs.log_probs.sum(dim=1), outputs
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_inputs(inputs), labels=labels, fused_lm_head=True, use_cache=False)
        # Prompt-learning PEFT prepends virtual positions: keep those of the real tokens.
        return outputs.log_probs[:, -(completion_mask.shape[1] - 1) :].sum(dim=1), outputs

    def sequence_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor, object]:
        """(chosen log-probs, rejected log-probs, the model's output) of TRL's batch: chosen rows, then
        rejected ones."""
        logps, outputs = self.row_logps(model, inputs)
        chosen_logps, rejected_logps = logps.chunk(2, dim=0)
        return chosen_logps, rejected_logps, outputs

    def reference_logps(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's sequence log-probs: precomputed columns of the batch, else TRL's reference pass."""
        if all(column in inputs for column in REF_COLUMNS):
            return inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        reference = self.ref_model if self.ref_model is not None else self.model  # PEFT: adapter switched off
        return self.compute_ref_log_probs(reference, inputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The f-DPO loss of TRL's batch; TRL's `compute_loss` for the options `fdpo_loss` lacks."""
        if self.trl_computes_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        chosen_logps, rejected_logps, outputs = self.sequence_logps(model, inputs)
        ref_chosen_logps, ref_rejected_logps = self.reference_logps(inputs)
        device = chosen_logps.device
        chosen_logratios = chosen_logps - ref_chosen_logps.to(device)
        rejected_logratios = rejected_logps - ref_rejected_logps.to(device)
        loss, chosen_rewards, rejected_rewards = weighted_fdpo_loss(
            (chosen_logratios, rejected_logratios), self.divergence, self.beta, self.loss_types,
            self.loss_weights, self.label_smoothing,
        )  # fmt: skip
        self._record_metrics(
            inputs, outputs, (chosen_logps, rejected_logps), (chosen_logratios, rejected_logratios),
            (chosen_rewards, rejected_rewards),
        )  # fmt: skip
        if not return_outputs:
            return loss
        with torch.no_grad():  # logits for `compute_metrics`, which the fused head never builds (as TRL)
            return loss, model(**model_inputs(inputs))

    @torch.no_grad()
    def _record_metrics(self, inputs, outputs, logps, logratios, rewards, metrics=None) -> None:
        """The metrics TRL's loss logs, with rewards = beta * f'(u), plus the mean log-ratios.

        Each is appended as a 0-d tensor on the device, read by the host at the next log (`log`): on a GPU
        a read (`.item()`, `if tensor`) waits for the step's work, a dozen stalls a step per run otherwise.
        Masked sums rather than boolean indexing, whose output size the host must wait for too.
        `metrics`: the lists to append to (default: TRL's, of the current mode)."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode] if metrics is None else metrics
        gather = self.accelerator.gather_for_metrics
        width = inputs["completion_mask"].shape[1] - 1
        mask = inputs["completion_mask"][:, 1:].bool()  # positions that score an answer token
        chosen_mask, rejected_mask = mask.chunk(2, dim=0)

        def token_mean(values, where) -> torch.Tensor:
            total = gather(values.float().masked_fill(~where, 0).sum()).sum()
            count = gather(where.sum()).sum()
            return torch.where(count > 0, total / count.clamp(min=1), 0.0)  # 0 where nothing is scored

        metrics["entropy"].append(token_mean(outputs.entropy[:, -width:], mask))
        if mode == "train":  # a running count on the device: int + tensor gives a tensor
            tokens = gather(inputs["attention_mask"].sum()).sum()
            self._total_train_tokens = self._total_train_tokens + tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        chosen_logits, rejected_logits = outputs.mean_logits[:, -width:].chunk(2, dim=0)
        metrics["logits/chosen"].append(token_mean(chosen_logits, chosen_mask))
        metrics["logits/rejected"].append(token_mean(rejected_logits, rejected_mask))
        chosen_top1, _ = outputs.is_top1[:, -width:].chunk(2, dim=0)
        metrics["mean_token_accuracy"].append(token_mean(chosen_top1, chosen_mask))
        chosen_rewards, rejected_rewards = (reward.detach() for reward in rewards)
        metrics["rewards/chosen"].append(gather(chosen_rewards).mean())
        metrics["rewards/rejected"].append(gather(rejected_rewards).mean())
        right = (chosen_rewards > rejected_rewards).float()
        metrics["rewards/accuracies"].append(gather(right).mean())
        metrics["rewards/margins"].append(gather(chosen_rewards - rejected_rewards).mean())
        for side, value in zip(("chosen", "rejected"), logps, strict=True):
            metrics[f"logps/{side}"].append(gather(value.detach()).mean())
        for side, value in zip(("chosen", "rejected"), logratios, strict=True):
            metrics[f"logratios/{side}"].append(gather(value.detach()).mean())

    def recorded_lists(self) -> list[list]:
        """Every list that may hold values recorded on the device since the last log."""
        return [values for store in self._metrics.values() for values in store.values()]

    def read_recorded(self) -> None:
        """The values recorded on the device since the last log, read by the host in one go."""
        read_to_host(self.recorded_lists())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log (the mean of each metric since the last one), the recorded values read first."""
        self.read_recorded()
        super().log(logs, start_time)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """TRL's step, then a guard: a non-finite loss or gradient stops the run before the optimizer step.

        So no NaN ever reaches the weights, and the last checkpoint on disk stays the last good one.
        With `skip_nonfinite_batches` the batch's gradients are dropped instead and training goes on.
        A stack guards each run apart (`guarded_parts`), so one run's bad batch costs no other run its step.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        parts = self.guarded_parts(model, inputs, loss)
        totals = []
        for part in parts:
            grads = [p.grad for p in part.parameters if p.grad is not None]
            total = part.loss.detach().float().sum()
            if grads:
                total = total + torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
            totals.append(total)
        # One host sync per step: a NaN or inf anywhere in a part makes its sum non-finite.
        finite = torch.isfinite(torch.stack(totals)).tolist()
        if all(finite):
            return loss
        kept = loss.new_zeros(())  # what the logged training loss adds up: the parts that stepped
        for part, ok in zip(parts, finite, strict=True):
            if ok:
                kept = kept + part.loss.detach() / self.current_gradient_accumulation_steps
                continue
            what = "loss" if not torch.isfinite(part.loss).all() else "gradient"
            row = part.first_row
            prompt_tokens = (inputs["attention_mask"][row] == 1) & (inputs["completion_mask"][row] == 0)
            prompt = self.processing_class.decode(
                inputs["input_ids"][row][prompt_tokens], skip_special_tokens=True
            )
            where = (
                f"optimizer step {self.state.global_step + 1} (epoch {self.state.epoch or 0:.2f}, "
                f"batch starting with prompt {prompt[:40]!r}){part.label}"
            )
            if not self.args.skip_nonfinite_batches:
                raise TrainingDiverged(
                    f"non-finite {what} at {where}; nothing was applied, checkpoints in "
                    f"{self.args.output_dir} are the last good ones",
                    runs=[self.run_name_of(part.run)],
                )
            # Gradients set to None: AdamW leaves those parameters and their moments untouched this step.
            for parameter in part.parameters:
                parameter.grad = None
            logger.warning("non-finite %s at %s: batch skipped", what, where)
            # In the log history, which checkpoints keep, so `train` counts the skips of a resumed run too.
            entry = {"nonfinite_skipped": what, "epoch": self.state.epoch, "step": self.state.global_step + 1}
            self.state.log_history.append(entry if part.run is None else {**entry, "run": part.run})
        return kept

    def train(self, *args, **kwargs):
        """The Trainer's training, then TrainingDiverged if a run skipped more than `MAX_SKIPPED_SHARE` of its
        optimizer steps (`skip_nonfinite_batches`): its weights would otherwise be saved as a finished run
        at the reference's KL and accuracy. Each run of a stack counts its own skipped steps."""
        result = super().train(*args, **kwargs)
        skipped: dict[int | None, set[int]] = {}
        for entry in self.state.log_history:
            if "nonfinite_skipped" in entry:
                skipped.setdefault(entry.get("run"), set()).add(entry["step"])
        total = self.state.global_step
        failing = [
            (run, steps)
            for run, steps in sorted(skipped.items(), key=lambda item: -1 if item[0] is None else item[0])
            if len(steps) > MAX_SKIPPED_SHARE * total
        ]
        failed = [
            f"run {self.run_name_of(run)} skipped {len(steps)} of {total} steps" for run, steps in failing
        ]
        if failed:
            raise TrainingDiverged(
                f"{', '.join(failed)} on a non-finite loss or gradient (--skip_nonfinite_batches): more than "
                f"{MAX_SKIPPED_SHARE:.0%} of its steps, so the run failed and no final weights were saved; "
                "its checkpoints count those skips, so resuming fails again: lower the learning rate or "
                "raise beta, and remove the run's checkpoint-* folders to start it afresh",
                runs=[self.run_name_of(run) for run, _ in failing],
            )
        return result

    def run_name_of(self, run: int | None) -> str:
        """A run's name in messages, its output folder's (`run`: its index in a stack, None when alone)."""
        return Path(self.args.output_dir).name

    def guarded_parts(self, model, inputs, loss) -> list[GuardedPart]:
        """What the non-finite guard checks as one: a lone run's loss and all its parameters."""
        return [GuardedPart(loss, list(model.parameters()), first_row=0)]

    def _get_train_sampler(self, train_dataset=None):
        """With `length_buckets`, batches from shared length buckets (`train_dpo.length_buckets`); with
        `group_by_length`, transformers' length-grouped sampler keyed by a pair's padded width.

        A DPO batch is as wide as its longest prompt plus its longest completion, chosen or rejected.
        """
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.length_buckets:
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return LengthBucketSampler(
                pair_widths(dataset), self.args.train_batch_size, self.args.length_buckets, seed
            )
        if not self.args.group_by_length or self.args.length_column_name in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(batch, lengths=pair_widths(dataset))

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """TRL's precompute, through a cache of the reference log-probs shared by runs (`ref_logps_cache`).

        TRL keeps its own copy beside the dataset's cache files, which an in-memory dataset (pairs built
        from the study's JSON) does not have, so every run of a sweep would recompute it.
        """
        cache = self._ref_logps_cache_file(dataset)
        if cache is None:
            return super()._precompute_ref_logps(dataset, name, batch_size)
        if cache.is_file():
            stored = np.load(cache)
            for column in REF_COLUMNS:
                dataset = dataset.add_column(column, stored[column])
            return dataset
        dataset = super()._precompute_ref_logps(dataset, name, batch_size)
        columns = {column: np.asarray(dataset[column], dtype=np.float32) for column in REF_COLUMNS}
        with atomic_file(cache, shared=True) as tmp, open(tmp, "wb") as handle:  # runs side by side
            np.savez(handle, **columns)  # a handle: given a path, savez would append ".npz" to it
        return dataset

    def _ref_logps_cache_file(self, dataset: Dataset) -> Path | None:
        """Cache path keyed by the reference model's identity and the tokenized pairs; None when off.

        Off with several processes, where each process would see its own shard.
        """
        if not self.args.ref_logps_cache or self.accelerator.num_processes > 1:
            return None
        name = str(self.accelerator.unwrap_model(self.model).config._name_or_path)
        weights = Path(name) / "model.safetensors"
        identity = [name, weights.stat().st_size, weights.stat().st_mtime_ns] if weights.is_file() else [name]
        pairs = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()
        key = Hasher.hash([identity, self.args.max_length, self.args.truncation_mode, pairs])
        return Path(self.args.ref_logps_cache) / f"{key}.npz"
