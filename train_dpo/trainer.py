"""TRL's DPOTrainer with the paper's f-divergences, in `dpo_loss`.

TRL 0.28 does batching, PEFT reference handling and logging; `dpo_loss` swaps the map from log-ratios
to loss. Its `rewards/*` metrics then carry the divergence-aware implicit reward beta * f'(u) (TRL's
own is beta * log u whatever the divergence). The other overrides make it faster or safer, not
different: log-probs projected on completion tokens only, a shared reference cache, a guard against
non-finite steps, and length-grouped batches.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import torch
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers.trainer_pt_utils import LengthGroupedSampler
from trl import DPOConfig, DPOTrainer
from trl.trainer.utils import flush_left, flush_right

import config
from common.atomic import atomic_file
from common.errors import TrainingDiverged
from train_dpo.divergences import Divergence, available, get_divergence
from train_dpo.logps import accepts_logits_to_keep, completion_logps, head_gives_logits, takes_own_mask
from train_dpo.losses import LOSS_TYPES, fdpo_loss

logger = logging.getLogger(__name__)

# The mixed precision `accelerate launch` asked for, if any (read at import, before any config is made).
LAUNCHER_MIXED_PRECISION = os.environ.get("ACCELERATE_MIXED_PRECISION")


def forget_earlier_mixed_precision() -> None:
    """Call before making a training config: leaves ACCELERATE_MIXED_PRECISION as the launcher set it.

    transformers writes a config's bf16 / fp16 into that variable and never takes it back, so an fp32
    run after a bf16 one in the same process would get an Accelerator that autocasts in bf16 all the
    same (it trained 30 % slower, bench/train.py).
    """
    if LAUNCHER_MIXED_PRECISION is None:
        os.environ.pop("ACCELERATE_MIXED_PRECISION", None)
    else:
        os.environ["ACCELERATE_MIXED_PRECISION"] = LAUNCHER_MIXED_PRECISION


# Every loss_type TRL 0.28's DPOTrainer.dpo_loss computes (aot_pair: its deprecated name for aot_unpaired).
# Checked here, as TRL itself only refuses an unknown one at the first training step.
TRL_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "aot_pair", "discopop", "apo_zero", "apo_down", "sft")  # fmt: skip

REF_COLUMNS = (
    "ref_chosen_logps",
    "ref_rejected_logps",
)  # where TRL looks for precomputed reference log-probs


@dataclass
class FDPOConfig(DPOConfig):
    """DPOConfig plus the f-divergence, with the study's defaults where TRL's differ.

    TRL defaults to bf16 everywhere, gradient checkpointing and max_length 1024; the study trained
    GPT-2 in fp32 with max length 256 and batch 8. Here bf16 and TF32 are on only on GPUs that have them.
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
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
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
        gpu = torch.cuda.is_available()
        if self.bf16 is None:  # TRL would turn bf16 on everywhere, CPU included
            self.bf16 = gpu and torch.cuda.is_bf16_supported()
        if self.bf16 and not gpu and not self.use_cpu:  # else transformers' "setup doesn't support bf16/gpu"
            raise ValueError("--bf16 true without a GPU needs --use_cpu true (bf16 autocast on the CPU)")
        if self.tf32 is None and gpu and torch.cuda.get_device_capability()[0] >= 8:
            self.tf32 = True
        if self.report_to is None:  # W&B only when configured; its mode then decides online or offline
            mode = os.environ.get("WANDB_MODE", "")
            configured = mode != "disabled" and (os.environ.get("WANDB_API_KEY") or mode)
            self.report_to = "wandb" if configured else "none"
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
        if self.beta <= 0:
            raise ValueError(f"--beta must be > 0, got {self.beta}")
        if self.output_dir is None:
            self.run_name = self.run_name or run_name(divergence, losses[0], self.beta)
            self.output_dir = str(config.RESULTS_DIR / self.run_name)
        forget_earlier_mixed_precision()
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


class FDPOTrainer(DPOTrainer):
    """DPOTrainer whose `sigmoid`/`hinge` losses use f'(u) of the configured divergence."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.divergence = self.args.get_divergence()
        self.completion_only_logits: bool | None = None  # None: decided on the first batch; False: TRL's path

    def concatenated_forward(self, model, batch, is_ref_model: bool = False):
        """TRL's policy / reference forward, with the vocabulary projection on completion tokens only.

        See `train_dpo/logps.py`. TRL's own path runs for the options this one does not cover.
        """
        if not self._uses_completion_only_logits(model, batch):
            return super().concatenated_forward(model, batch, is_ref_model)
        num_examples = batch["prompt_input_ids"].shape[0]
        inputs = self.concatenated_inputs(batch, padding_value=self.pad_token_id)
        prompt_mask, completion_mask = inputs["prompt_attention_mask"], inputs["completion_attention_mask"]
        input_ids = torch.cat((inputs["prompt_input_ids"], inputs["completion_input_ids"]), dim=1)
        attention_mask = torch.cat((prompt_mask, completion_mask), dim=1)
        loss_mask = torch.cat((torch.zeros_like(prompt_mask), completion_mask), dim=1)
        attention_mask, input_ids, loss_mask = self._truncate(attention_mask, input_ids, loss_mask)
        unwrapped = self.accelerator.unwrap_model(model)
        own_mask = takes_own_mask(unwrapped.config)
        out = completion_logps(
            model, unwrapped.get_output_embeddings(), input_ids, attention_mask, loss_mask, own_mask
        )
        sums, tokens = out["logit_sums"], out["tokens"]
        return {
            "chosen_logps": out["logps"][:num_examples],
            "rejected_logps": out["logps"][num_examples:],
            "mean_chosen_logits": sums[:num_examples].sum() / tokens[:num_examples].sum(),
            "mean_rejected_logits": sums[num_examples:].sum() / tokens[num_examples:].sum(),
        }

    def _truncate(self, attention_mask, input_ids, loss_mask):
        """As TRL: rows left-aligned, cut to `max_length` keeping their end or start (`truncation_mode`)."""
        if self.max_length is None or self.max_length >= attention_mask.shape[1]:
            return flush_left(attention_mask, input_ids, loss_mask)
        if self.truncation_mode == "keep_start":
            return (t[:, : self.max_length] for t in flush_left(attention_mask, input_ids, loss_mask))
        kept = (t[:, -self.max_length :] for t in flush_right(attention_mask, input_ids, loss_mask))
        return flush_left(*kept)

    def _uses_completion_only_logits(self, model, batch) -> bool:
        """Whether `concatenated_forward` can skip TRL's full-vocabulary pass (decided on the first batch)."""
        if self.completion_only_logits is not None:
            return self.completion_only_logits
        args, losses = self.args, [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        trl_only = (
            self.is_encoder_decoder
            or self.is_fsdp_enabled  # sharded parameters: the head may only run inside the model's forward
            or self.is_deepspeed_enabled
            or self.padding_free
            or self.use_logits_to_keep
            or self.use_weighting
            or self.aux_loss_enabled
            or args.rpo_alpha is not None
            or args.ld_alpha is not None
            or self.truncation_mode not in ("keep_start", "keep_end")
            or any(name in ("sft", "ipo") for name in losses)  # need the logits or the lengths TRL's way
            or any(key.startswith(("pixel_", "image_", "token_type")) for key in batch)
        )
        unwrapped = self.accelerator.unwrap_model(model)
        prompt = batch["prompt_input_ids"][:1], batch["prompt_attention_mask"][:1]
        self.completion_only_logits = (
            not trl_only and accepts_logits_to_keep(unwrapped) and head_gives_logits(unwrapped, *prompt)
        )
        return self.completion_only_logits

    def training_step(self, model, inputs, num_items_in_batch=None):
        """TRL's step, then a guard: a non-finite loss or gradient stops the run before the optimizer step.

        So no NaN ever reaches the weights, and the last checkpoint on disk stays the last good one.
        With `skip_nonfinite_batches` the batch's gradients are dropped instead and training goes on.
        """
        loss = super().training_step(model, inputs, num_items_in_batch)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        # One reduction and one host sync per step: a NaN or inf anywhere makes the sum non-finite.
        total = loss.detach().float().sum()
        if grads:
            total = total + torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)
        finite = bool(torch.isfinite(total))
        if finite:
            return loss
        what = "loss" if not torch.isfinite(loss).all() else "gradient"
        prompt = self.processing_class.decode(inputs["prompt_input_ids"][0], skip_special_tokens=True)[:40]
        where = (
            f"optimizer step {self.state.global_step + 1} (epoch {self.state.epoch or 0:.2f}, "
            f"batch starting with prompt {prompt!r})"
        )
        if self.args.skip_nonfinite_batches:
            # Gradients set to None: AdamW leaves those parameters and their moments untouched this step.
            model.zero_grad(set_to_none=True)
            logger.warning("non-finite %s at %s: batch skipped", what, where)
            return loss.new_zeros(())
        raise TrainingDiverged(
            f"non-finite {what} at {where}; nothing was applied, checkpoints in "
            f"{self.args.output_dir} are the last good ones"
        )

    def _get_train_sampler(self, train_dataset=None):
        """With `group_by_length`, transformers' length-grouped sampler keyed by a pair's padded width.

        A DPO batch is as wide as its longest prompt plus its longest completion, chosen or rejected.
        """
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.args.group_by_length or self.args.length_column_name in dataset.column_names:
            return super()._get_train_sampler(train_dataset)
        columns = [dataset[f"{key}_input_ids"] for key in ("prompt", "chosen", "rejected")]
        lengths = [len(p) + max(len(c), len(r)) for p, c, r in zip(*columns, strict=True)]
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return LengthGroupedSampler(batch, lengths=lengths)

    def get_train_dataloader(self):
        """TRL's, plus a shared cache of the reference log-probs (`ref_logps_cache`)."""
        cache = self._ref_logps_cache_file()
        if cache is not None and not self._precomputed_train_ref_log_probs:
            if cache.is_file():
                stored = np.load(cache)
                columns = {column: stored[column] for column in REF_COLUMNS}
            else:
                columns = self._reference_logps()
                with atomic_file(cache, shared=True) as tmp, open(tmp, "wb") as handle:  # runs side by side
                    np.savez(handle, **columns)  # a handle: given a path, savez would append ".npz" to it
            for column, values in columns.items():
                self.train_dataset = self.train_dataset.add_column(column, values)
            self._precomputed_train_ref_log_probs = True
        with self.accelerator.autocast():  # TRL's own fill (no cache) in the precision of the reference pass
            return super().get_train_dataloader()

    @torch.no_grad()
    def _reference_logps(self) -> dict[str, np.ndarray]:
        """Reference log-probs of every training pair, in order, in the precision of the reference pass.

        TRL's precompute loop, less its `gc.collect()` and device-cache emptying after every batch,
        which cost a full garbage collection of the process per batch. Single process only (the cache is).
        """
        loader = DataLoader(
            self.train_dataset,
            batch_size=self.args.precompute_ref_batch_size,
            collate_fn=self.data_collator,
            shuffle=False,
        )
        chosen, rejected = [], []
        with self.accelerator.autocast():
            for batch in tqdm(loader, desc="Reference log-probs", disable=self.args.disable_tqdm):
                chosen_logps, rejected_logps = self.compute_ref_log_probs(self._prepare_inputs(batch))
                chosen.append(chosen_logps.float().cpu())
                rejected.append(rejected_logps.float().cpu())
        return dict(zip(REF_COLUMNS, (torch.cat(chosen).numpy(), torch.cat(rejected).numpy()), strict=True))

    def _ref_logps_cache_file(self) -> Path | None:
        """Cache path keyed by the reference model's identity and the tokenized pairs; None when off.

        Off with several processes, where each process would see its own shard.
        """
        if not self.args.ref_logps_cache or self.accelerator.num_processes > 1:
            return None
        name = str(self.accelerator.unwrap_model(self.model).config._name_or_path)
        weights = Path(name) / "model.safetensors"
        identity = [name, weights.stat().st_size, weights.stat().st_mtime_ns] if weights.is_file() else [name]
        columns = ["prompt_input_ids", "chosen_input_ids", "rejected_input_ids"]
        key = Hasher.hash(
            [identity, self.args.max_length, self.train_dataset.select_columns(columns).to_dict()]
        )
        return Path(self.args.ref_logps_cache) / f"{key}.npz"

    def dpo_loss(
        self,
        chosen_logps: torch.FloatTensor,
        rejected_logps: torch.FloatTensor,
        ref_chosen_logps: torch.FloatTensor,
        ref_rejected_logps: torch.FloatTensor,
        loss_type: str = "sigmoid",
        model_output: dict[str, torch.FloatTensor] | None = None,
    ) -> tuple[torch.FloatTensor, torch.FloatTensor, torch.FloatTensor]:
        if loss_type not in LOSS_TYPES:  # TRL's other losses, reverse KL only (checked in FDPOConfig)
            return super().dpo_loss(
                chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, loss_type, model_output
            )
        device = self.accelerator.device
        chosen_logratios = chosen_logps.to(device) - ref_chosen_logps.to(device)
        rejected_logratios = rejected_logps.to(device) - ref_rejected_logps.to(device)
        losses, chosen_rewards, rejected_rewards = fdpo_loss(
            chosen_logratios,
            rejected_logratios,
            self.divergence,
            self.beta,
            loss_type=loss_type,
            label_smoothing=self.label_smoothing,
        )
        prefix = "" if self.model.training else "eval_"  # TRL's convention for eval metric names
        gather = self.accelerator.gather_for_metrics
        self.store_metrics(
            {
                f"{prefix}logratios/chosen": gather(chosen_logratios.detach()).mean().item(),
                f"{prefix}logratios/rejected": gather(rejected_logratios.detach()).mean().item(),
            },
            train_eval="train" if self.model.training else "eval",
        )
        return losses, chosen_rewards, rejected_rewards
