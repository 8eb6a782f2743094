"""Models ONNX can't express faithfully, uploaded as state_dict + this source by
tests/integration/test_torch_runtime.py (the file is sent as the upload's `source`)."""

import os
import socket
import time

import torch
from torch import nn


class Branch(nn.Module):
    """Takes one of two paths depending on the input's values."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.mean() > 0:
            return self.fc(x) + 1.0
        return self.fc(x) - 1.0


class PackedGRU(nn.Module):
    """Variable-length text classifier: token ids and lengths, packed for the GRU."""

    def __init__(self, vocab=50, dim=8, hidden=16, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, tokens, lengths):
        packed = nn.utils.rnn.pack_padded_sequence(
            self.emb(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h = self.gru(packed)
        return self.head(h[-1])


class Greedy(nn.Module):
    """Greedy decoding until the end token 0 (or max_len steps). With the test's weights the next
    token is the previous one minus one, so a start token k decodes to k-1, ..., 0."""

    def __init__(self, vocab=16, max_len=32):
        super().__init__()
        self.emb = nn.Embedding(vocab, vocab)
        self.out = nn.Linear(vocab, vocab, bias=False)
        self.max_len = max_len

    def forward(self, start):
        tok = start[:, 0]
        result = []
        while len(result) < self.max_len:
            tok = self.out(self.emb(tok)).argmax(-1)
            result.append(tok)
            if bool((tok == 0).all()):
                break
        return torch.stack(result, 1)


class Probe(nn.Module):
    """Tries what a hostile forward would, at serving time, and reports what worked (1) or not (0):
    the host's PostgreSQL socket file, a unix socket, a file of the project, the worker's
    secrets in the environment, TCP to the host's PostgreSQL, a file the test left in the host's /tmp."""

    def __init__(self, settings_path="", pg_socket="/var/run/postgresql/.s.PGSQL.5432", host_marker=""):
        super().__init__()
        self.fc = nn.Linear(1, 1)
        self.settings_path = settings_path
        self.pg_socket = pg_socket
        self.host_marker = host_marker

    def forward(self, x):
        flags = []
        flags.append(os.path.exists(self.pg_socket))
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.pg_socket)
            flags.append(True)
        except OSError:
            flags.append(False)
        try:
            with open(self.settings_path) as f:
                flags.append(bool(f.read(10)))
        except OSError:
            flags.append(False)
        flags.append(any(k in os.environ for k in ("SECRET_KEY", "DATABASE_URL", "REDIS_URL")))
        try:
            socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
            flags.append(True)
        except OSError:
            flags.append(False)
        flags.append(os.path.exists(self.host_marker))
        return torch.tensor([[float(f) for f in flags]] * x.shape[0]) + 0 * self.fc(x)


class Faulty(nn.Module):
    """Behaves by the input's first value: > 100 kills its own process, < -100 never returns,
    exactly 7 raises in forward, 13 allocates far past the memory limit, 21 answers with another
    dtype than its signature's, 33 forks until it can't; else doubles x."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x):
        v = float(x[0, 0])
        if v > 100:
            os.kill(os.getpid(), 9)
        if v < -100:
            while True:
                time.sleep(1)
        if v == 7:
            raise ValueError("seven is not allowed")
        if v == 33:
            for _ in range(10_000):
                if os.fork() == 0:
                    time.sleep(60)
                    os._exit(0)
        if v == 21:
            return (x * self.scale).long()
        if v == 13:
            hog = torch.ones(16 * 2**30 // 4)  # 16 GiB
            return hog[:1].reshape(1, 1).expand(x.shape[0], x.shape[1]).clone()
        return x * self.scale


class SmallCNN(nn.Module):
    """A CIFAR-size image classifier (bench/torch_runtime.py)."""

    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(32 * 8 * 8, classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))
