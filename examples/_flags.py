"""Command-line flags every example shares (no framework imports: the TensorFlow examples use it too)."""
from __future__ import annotations

import argparse
from pathlib import Path

#: ``--seed``'s default: initial weights and, where the example shuffles, the data order
DEFAULT_SEED = 42


def add_common_flags(parser: argparse.ArgumentParser, *, epochs: int, batch_size: int, lr: float):
    parser.add_argument("--compression", default="powersgd:rank=2",
                        help="compressor spec for horovod_powersgd.torch.from_spec "
                             "(e.g. powersgd:rank=2, powersgd:rank=1,start_step=10), 'fp16', or 'none'")
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--batch-size", type=int, default=batch_size, help="per rank")
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--max-batches", type=int, default=None,
                        help="stop each epoch after this many batches (smoke runs)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="save model, optimizer and compressor state here after every epoch "
                             "(one file per rank: PATH.rank<k>)")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--json", type=Path, default=None,
                        help="rank 0 appends one JSON record per epoch and a final one here")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar (logs, CI)")
    return parser
