"""Sentiment classifier over token ids: Embedding -> LSTM -> Linear (example for `state_dict` uploads).

Upload with entrypoint `SentimentLSTM`, init_kwargs as in build_examples.py, and the input
`[{"name": "tokens", "dtype": "int64", "shape": [null, null]}]` (batch, sequence length).
Only torch is imported: the converter runs this file in its sandbox.
"""

import torch
from torch import nn


class SentimentLSTM(nn.Module):
    def __init__(self, vocab_size: int = 1000, embed_dim: int = 32, hidden_dim: int = 64, num_classes: int = 2) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.classifier = nn.Linear(hidden_dim, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.embedding(tokens))
        return self.classifier(hidden[-1])
