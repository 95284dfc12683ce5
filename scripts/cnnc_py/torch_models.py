"""PyTorch twins of the seed networks in models/, shared by every Python script
that needs them (reference data, fixtures, the bundled weights' training, the
GPU check, benchmarks), so the module paths that name the state_dict entries
are written once.

    from cnnc_py.torch_models import MnistCnn, LeNet5

(after the one line that puts scripts/ on the path: see __init__.py).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class MnistCnn(nn.Module):
    """models/mnist_cnn.cnn: the source chapter's MNIST CNN (28x28 in, logits out)."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Sequential(
            nn.Conv2d(1, 16, 5), nn.ReLU(),
            nn.Conv2d(16, 32, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(32, 64, 5), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        self.fc_layer = nn.Sequential(nn.Linear(64 * 3 * 3, 100), nn.ReLU(), nn.Linear(100, 10))

    def forward(self, x):
        return self.fc_layer(torch.flatten(self.layer(x), 1))


class LeNet5(nn.Module):
    """models/lenet5.cnn: tanh, 2x2 average pools, 32x32 input, log-probabilities out."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.conv3 = nn.Conv2d(16, 120, 5)
        self.fc1 = nn.Linear(120, 84)
        self.fc2 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.avg_pool2d(torch.tanh(self.conv1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        x = torch.tanh(self.conv3(x))
        x = torch.tanh(self.fc1(torch.flatten(x, 1)))
        return F.log_softmax(self.fc2(x), dim=1)
