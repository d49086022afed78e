"""A word-level LSTM language model on Penn Treebank, data-parallel with Horovod and a compressor.

    horovodrun -np 2 python -m examples.torch_ptb_lstm --compression powersgd:rank=2
    horovodrun -np 2 python -m examples.torch_ptb_lstm --compression none --train-tokens 200000
    torchrun --nproc-per-node 2 -m examples.torch_ptb_lstm --engine ddp --compression powersgd:rank=2

The same loop trains with PyTorch DDP and its powerSGD_hook instead (``--engine ddp``, `_engine`).

The classic recipe (Zaremba et al. 2014, "small"): 2-layer LSTM, truncated back-propagation through
``--bptt`` steps, gradient-norm clipping, plain SGD; evaluated by perplexity exp(mean cross-entropy)
on the validation (every epoch) and test (at the end) splits. The embedding (10k×E) and the decoder
(H×10k) hold most of the parameters, and their gradients are dense matrices PowerSGD compresses.
Each rank trains on its own contiguous 1/size of the training stream.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _common
from ._engine import add_engine_flag, make_engine
from .datasets import PennTreebank, batchify


class WordLSTM(nn.Module):
    def __init__(self, vocab: int, embedding: int = 200, hidden: int = 200, layers: int = 2,
                 dropout: float = 0.2):
        super().__init__()
        self.embed = nn.Embedding(vocab, embedding)  # dense gradients: Horovod all-reduces them
        self.lstm = nn.LSTM(embedding, hidden, layers, dropout=dropout)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        out, state = self.lstm(self.drop(self.embed(tokens)), state)
        return self.decoder(self.drop(out)), state


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.add_common_flags(parser, epochs=1, batch_size=20, lr=20.0)
    parser.add_argument("--bptt", type=int, default=35, help="truncated back-propagation length")
    parser.add_argument("--clip", type=float, default=0.25, help="gradient-norm clipping")
    parser.add_argument("--embedding", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=200)
    parser.add_argument("--train-tokens", type=int, default=None,
                        help="use the first N training tokens (all ranks together)")
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="use the first N validation/test tokens")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="also measure validation perplexity every N steps (time-to-accuracy "
                             "curves; the evaluation time is not counted as training time)")
    add_engine_flag(parser)
    return parser.parse_args(argv)


def detach(state):
    return tuple(s.detach() for s in state) if state is not None else None


def perplexity(engine, model, ids: np.ndarray, bptt: int, batch_size: int = 10) -> float:
    """exp(mean token cross-entropy); each rank scores its own columns, sums are combined."""
    model.eval()
    data = torch.from_numpy(batchify(ids, batch_size * engine.size()))[:, engine.rank()::engine.size()]
    loss_sum, count, state = 0.0, 0, None
    with torch.no_grad():
        for start in range(0, data.shape[0] - 1, bptt):
            seq = min(bptt, data.shape[0] - 1 - start)
            logits, state = model(data[start:start + seq], state)
            target = data[start + 1:start + 1 + seq]
            loss_sum += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                        reduction="sum").item()
            count += target.numel()
    model.train()
    return math.exp(engine.total(loss_sum, "eval.loss") / engine.total(count, "eval.count"))


def main(argv=None):
    args = parse_args(argv)
    engine = make_engine(args)
    torch.manual_seed(args.seed)
    corpus = PennTreebank()
    train_ids = corpus.ids("train")[:args.train_tokens]
    valid_ids, test_ids = (corpus.ids(s)[:args.eval_tokens] for s in ("valid", "test"))
    # Contiguous stream → (T, batch·size) columns; rank k takes every size-th column.
    train = torch.from_numpy(batchify(train_ids, args.batch_size * engine.size()))[
        :, engine.rank()::engine.size()]

    model = WordLSTM(corpus.vocab_size, args.embedding, args.hidden)
    trained, optimizer = engine.distribute(model, torch.optim.SGD(model.parameters(), lr=args.lr))
    first_epoch = 0
    if args.resume:
        first_epoch = _common.load_checkpoint(args.checkpoint, engine.rank(), model, optimizer,
                                              engine.compression)["epoch"] + 1
    else:
        engine.start_from_rank_0(model, optimizer)

    reporter = _common.Reporter(engine, args, "ptb_lstm", "valid_perplexity")
    starts = list(range(0, train.shape[0] - 1, args.bptt))
    if args.max_batches is not None:
        starts = starts[:args.max_batches]
    record, steps = None, 0
    for epoch in range(first_epoch, args.epochs):
        state, loss_sum, t0 = None, 0.0, time.perf_counter()
        bar = _common.progress(starts, enabled=engine.rank() == 0 and not args.no_progress,
                               desc=f"epoch {epoch}", total=len(starts))
        for start in bar:
            step_start = time.perf_counter()
            seq = min(args.bptt, train.shape[0] - 1 - start)
            state = detach(state)  # truncated BPTT: carry the state, not its history
            optimizer.zero_grad()
            logits, state = trained(train[start:start + seq], state)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                   train[start + 1:start + 1 + seq].reshape(-1))
            loss.backward()
            # the *averaged* gradient is clipped, identically on every rank
            engine.step(optimizer, lambda: nn.utils.clip_grad_norm_(model.parameters(), args.clip))
            loss_sum += loss.item()
            steps += 1
            reporter.step_done(time.perf_counter() - step_start)
            if args.eval_every and steps % args.eval_every == 0 and start != starts[-1]:
                reporter.train_seconds += time.perf_counter() - t0
                reporter.point(steps, perplexity(engine, model, valid_ids, args.bptt), engine)
                t0 = time.perf_counter()
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(ppl=f"{math.exp(min(loss.item(), 20)):.0f}")
        reporter.train_seconds += time.perf_counter() - t0
        train_loss = engine.average(loss_sum / max(1, len(starts)), "train.loss")
        record = reporter.epoch(epoch, train_loss, perplexity(engine, model, valid_ids, args.bptt),
                                engine, steps)
        if args.checkpoint is not None:
            _common.save_checkpoint(args.checkpoint, engine.rank(), epoch, model, optimizer,
                                    engine.compression)
    if record is not None:
        record["test_perplexity"] = perplexity(engine, model, test_ids, args.bptt)
        if engine.rank() == 0:
            print(f"test perplexity {record['test_perplexity']:.1f}")
        reporter.final(record)
    engine.close()


if __name__ == "__main__":
    main()
