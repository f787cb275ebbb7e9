"""Run train_dpo.train under `accelerate launch` and record each rank's trained weights (for test_distributed)."""

import hashlib
import json
import sys
from pathlib import Path

from train_dpo.train import parse_args, train


def main() -> None:
    trainer = train(*parse_args(sys.argv[1:]))
    state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        if "lora_" in name:
            digest.update(name.encode() + state[name].detach().cpu().numpy().tobytes())
    rank = trainer.accelerator.process_index
    record = {"rank": rank, "world_size": trainer.accelerator.num_processes, "sha256": digest.hexdigest(),
              "global_step": trainer.state.global_step}  # fmt: skip
    (Path(trainer.args.output_dir) / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
