import os

# Tests must behave the same on 2-core CI machines and bigger ones; W&B must never reach the network.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# Every row a test writes must have all its columns named by harness/schema.py (and so by the README's table).
os.environ.setdefault("SHOOTOUT_STRICT_SCHEMA", "1")

import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
