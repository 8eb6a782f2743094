"""A two-input, two-output model (example for `state_dict` uploads).

Entrypoint `build_two_tower` (a factory function); inputs `features` float32 [null, 8] and
`context` float32 [null, 4]; outputs `score` [null, 1] and `embedding` [null, 16].
"""

import torch
from torch import nn


class TwoTower(nn.Module):
    def __init__(self, feature_dim: int, context_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(feature_dim, hidden_dim), nn.Tanh())
        self.context = nn.Sequential(nn.Linear(context_dim, hidden_dim), nn.Tanh())
        self.head = nn.Linear(hidden_dim, 1)

    def forward(self, features: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.features(features) * self.context(context)
        return torch.sigmoid(self.head(embedding)), embedding


def build_two_tower(feature_dim: int = 8, context_dim: int = 4, hidden_dim: int = 16) -> TwoTower:
    return TwoTower(feature_dim, context_dim, hidden_dim)
