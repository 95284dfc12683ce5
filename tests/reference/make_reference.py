#!/usr/bin/env python3
"""Ground-truth reference data for the cnnc model zoo, computed with PyTorch.

Run by developers (not CI), from the repository root:

    python3 tests/reference/make_reference.py

Writes tests/reference/models.json. Generated with torch 2.15.0 (+cu132 build,
run on CPU only) and torchvision 0.29.2; numpy 2.4.6.

Per model (keyed by cnnc model name):
  input        [C,H,W]
  output       per-image output shape
  total_params sum(p.numel() for p in model.parameters())
  total_macs   sum of per-layer MACs (batch 1, eval mode, no_grad)
  state_dict   [[key, shape], ...] every state_dict entry in order (buffers too)
  layers       [[module path, "Conv2d"|"Linear", macs, per-image out shape], ...]
               every Conv2d / Linear call in forward order (hooks only see modules
               actually called, e.g. unused dim_equalizer convs add params, not MACs)
MACs: conv = out.numel() * (in_channels // groups) * kH * kW; linear = rows *
in_features * out_features. Bias not counted.
"""
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

torch.set_grad_enabled(False)
torch.manual_seed(0)

# ---------------------------------------------------------------- tutorial models


import pathlib, sys; sys.path.insert(0, str(next(p for p in pathlib.Path(__file__).resolve().parents if (p / "scripts/cnnc_py").is_dir()) / "scripts"))  # noqa: E401,E702 (see scripts/cnnc_py/__init__.py)
from cnnc_py.torch_models import LeNet5, MnistCnn as MnistCNN  # noqa: E402


def _lrn(x):
    return F.local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0)


class AlexNetOriginal(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 11, stride=4)
        self.conv2 = nn.Conv2d(96, 256, 5, padding=2)
        self.conv3 = nn.Conv2d(256, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 384, 3, padding=1)
        self.conv5 = nn.Conv2d(384, 256, 3, padding=1)
        self.fc1 = nn.Linear(6 * 6 * 256, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, num_classes)

    def forward(self, x):
        x = F.max_pool2d(_lrn(F.relu(self.conv1(x))), 3, 2)
        x = F.max_pool2d(_lrn(F.relu(self.conv2(x))), 3, 2)
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = F.max_pool2d(F.relu(self.conv5(x)), 3, 2)
        x = torch.flatten(x, 1)
        x = F.dropout(F.relu(self.fc1(x)), 0.5, self.training)
        x = F.dropout(F.relu(self.fc2(x)), 0.5, self.training)
        return self.fc3(x)


class ZFNet(nn.Module):
    # 224 -conv1(7,s2,p1)-> 110 -pool(3,s2,p1)-> 55 -conv2(5,s2)-> 26
    # -pool(3,s2,p1)-> 13 -conv3..5-> 13 -pool(3,s2)-> 6
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 96, 7, stride=2, padding=1)
        self.conv2 = nn.Conv2d(96, 256, 5, stride=2)
        self.conv3 = nn.Conv2d(256, 512, 3, padding=1)
        self.conv4 = nn.Conv2d(512, 1024, 3, padding=1)
        self.conv5 = nn.Conv2d(1024, 512, 3, padding=1)
        self.fc1 = nn.Linear(512 * 6 * 6, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, num_classes)

    def forward(self, x, trace=False):
        def t(name, v):
            if trace:
                print(f"  zfnet {name:8s} {list(v.shape[1:])}", file=sys.stderr)
            return v
        x = t("conv1", F.relu(self.conv1(x)))
        x = t("pool1", F.max_pool2d(_lrn(x), 3, stride=2, padding=1))
        x = t("conv2", F.relu(self.conv2(x)))
        x = t("pool2", F.max_pool2d(_lrn(x), 3, stride=2, padding=1))
        x = t("conv3", F.relu(self.conv3(x)))
        x = t("conv4", F.relu(self.conv4(x)))
        x = t("conv5", F.relu(self.conv5(x)))
        x = t("pool5", F.max_pool2d(x, 3, stride=2))
        x = t("flatten", torch.flatten(x, 1))
        x = t("fc1", F.dropout(F.relu(self.fc1(x)), 0.5, self.training))
        x = t("fc2", F.dropout(F.relu(self.fc2(x)), 0.5, self.training))
        return t("fc3", self.fc3(x))


def conv_2_block(i, o):
    return nn.Sequential(
        nn.Conv2d(i, o, 3, padding=1), nn.ReLU(),
        nn.Conv2d(o, o, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, 2),
    )


def conv_3_block(i, o):
    return nn.Sequential(
        nn.Conv2d(i, o, 3, padding=1), nn.ReLU(),
        nn.Conv2d(o, o, 3, padding=1), nn.ReLU(),
        nn.Conv2d(o, o, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, 2),
    )


class VGGSmall(nn.Module):
    def __init__(self, base_dim=16, num_classes=2):
        super().__init__()
        b = base_dim
        self.feature = nn.Sequential(
            conv_2_block(3, b), conv_2_block(b, 2 * b),
            conv_3_block(2 * b, 4 * b), conv_3_block(4 * b, 8 * b), conv_3_block(8 * b, 8 * b),
        )
        self.fc_layer = nn.Sequential(
            nn.Linear(8 * b * 7 * 7, 100), nn.ReLU(True),
            nn.Linear(100, 20), nn.ReLU(True),
            nn.Linear(20, num_classes),
        )

    def forward(self, x):
        x = self.feature(x)
        x = torch.flatten(x, 1)
        return self.fc_layer(x)


def g_conv_1(i, o):
    return nn.Sequential(nn.Conv2d(i, o, 1, 1), nn.ReLU())


def g_conv_1_3(i, m, o):
    return nn.Sequential(nn.Conv2d(i, m, 1, 1), nn.ReLU(), nn.Conv2d(m, o, 3, 1, 1), nn.ReLU())


def g_conv_1_5(i, m, o):
    return nn.Sequential(nn.Conv2d(i, m, 1, 1), nn.ReLU(), nn.Conv2d(m, o, 5, 1, 2), nn.ReLU())


def g_max_3_1(i, o):
    return nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(i, o, 1, 1), nn.ReLU())


class inception_module(nn.Module):
    def __init__(self, in_dim, out_dim_1, mid_dim_3, out_dim_3, mid_dim_5, out_dim_5, pool):
        super().__init__()
        self.conv_1 = g_conv_1(in_dim, out_dim_1)
        self.conv_1_3 = g_conv_1_3(in_dim, mid_dim_3, out_dim_3)
        self.conv_1_5 = g_conv_1_5(in_dim, mid_dim_5, out_dim_5)
        self.max_3_1 = g_max_3_1(in_dim, pool)

    def forward(self, x):
        return torch.cat([self.conv_1(x), self.conv_1_3(x), self.conv_1_5(x), self.max_3_1(x)], 1)


class GoogLeNetSmall(nn.Module):
    def __init__(self, base_dim=64, num_classes=2):
        super().__init__()
        b = base_dim
        self.layer_1 = nn.Sequential(
            nn.Conv2d(3, b, 7, 2, 3), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(b, b * 3, 3, 1, 1), nn.MaxPool2d(3, 2, 1),
        )
        self.layer_2 = nn.Sequential(
            inception_module(b * 3, 64, 96, 128, 16, 32, 32),
            inception_module(b * 4, 128, 128, 192, 32, 96, 64),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer_3 = nn.Sequential(
            inception_module(480, 192, 96, 208, 16, 48, 64),
            inception_module(512, 160, 112, 224, 24, 64, 64),
            inception_module(512, 128, 128, 256, 24, 64, 64),
            inception_module(512, 112, 144, 288, 32, 64, 64),
            inception_module(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layer_4 = nn.Sequential(
            inception_module(832, 256, 160, 320, 32, 128, 128),
            inception_module(832, 384, 192, 384, 48, 128, 128),
            nn.AvgPool2d(7, 1),
        )
        self.layer_5 = nn.Dropout2d(0.4)
        self.fc_layer = nn.Linear(1024, num_classes)

    def forward(self, x):
        x = self.layer_1(x)
        x = self.layer_2(x)
        x = self.layer_3(x)
        x = self.layer_4(x)
        x = self.layer_5(x)
        x = torch.flatten(x, 1)
        return self.fc_layer(x)


def conv_block_1(i, o, act_fn, stride=1):
    return nn.Sequential(nn.Conv2d(i, o, kernel_size=1, stride=stride), act_fn)


def conv_block_3(i, o, act_fn):
    return nn.Sequential(nn.Conv2d(i, o, kernel_size=3, stride=1, padding=1), act_fn)


class BottleNeck(nn.Module):
    def __init__(self, in_dim, mid_dim, out_dim, act_fn, down=False):
        super().__init__()
        self.down = down
        if down:
            self.layer = nn.Sequential(
                conv_block_1(in_dim, mid_dim, act_fn, 2),
                conv_block_3(mid_dim, mid_dim, act_fn),
                conv_block_1(mid_dim, out_dim, act_fn),
            )
            self.downsample = nn.Conv2d(in_dim, out_dim, 1, 2)
        else:
            self.layer = nn.Sequential(
                conv_block_1(in_dim, mid_dim, act_fn),
                conv_block_3(mid_dim, mid_dim, act_fn),
                conv_block_1(mid_dim, out_dim, act_fn),
            )
        # always created, even for down blocks (where it is unused)
        self.dim_equalizer = nn.Conv2d(in_dim, out_dim, kernel_size=1)

    def forward(self, x):
        if self.down:
            return self.layer(x) + self.downsample(x)
        return self.layer(x) + self.dim_equalizer(x)


class ResNet50Bottleneck(nn.Module):
    def __init__(self, base_dim=64, num_classes=2):
        super().__init__()
        b = base_dim
        self.act_fn = nn.ReLU()
        a = self.act_fn
        self.layer_1 = nn.Sequential(nn.Conv2d(3, b, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layer_2 = nn.Sequential(
            BottleNeck(b, b, 4 * b, a),
            BottleNeck(4 * b, b, 4 * b, a),
            BottleNeck(4 * b, b, 4 * b, a, down=True),
        )
        self.layer_3 = nn.Sequential(
            BottleNeck(4 * b, 2 * b, 8 * b, a),
            BottleNeck(8 * b, 2 * b, 8 * b, a),
            BottleNeck(8 * b, 2 * b, 8 * b, a),
            BottleNeck(8 * b, 2 * b, 8 * b, a, down=True),
        )
        self.layer_4 = nn.Sequential(
            BottleNeck(8 * b, 4 * b, 16 * b, a),
            *[BottleNeck(16 * b, 4 * b, 16 * b, a) for _ in range(4)],
            BottleNeck(16 * b, 4 * b, 16 * b, a, down=True),
        )
        self.layer_5 = nn.Sequential(
            BottleNeck(16 * b, 8 * b, 32 * b, a),
            BottleNeck(32 * b, 8 * b, 32 * b, a),
            BottleNeck(32 * b, 8 * b, 32 * b, a),
        )
        self.avgpool = nn.AvgPool2d(7, 1)
        self.fc_layer = nn.Linear(32 * b, num_classes)

    def forward(self, x):
        x = self.layer_1(x)
        x = self.layer_2(x)
        x = self.layer_3(x)
        x = self.layer_4(x)
        x = self.layer_5(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc_layer(x)


# ---------------------------------------------------------------- zoo

TV = torchvision.models
IN224 = [3, 224, 224]

MODELS = {
    "alexnet": (lambda: TV.alexnet(weights=None), IN224),
    "vgg11": (lambda: TV.vgg11(weights=None), IN224),
    "vgg11_bn": (lambda: TV.vgg11_bn(weights=None), IN224),
    "vgg13": (lambda: TV.vgg13(weights=None), IN224),
    "vgg13_bn": (lambda: TV.vgg13_bn(weights=None), IN224),
    "vgg16": (lambda: TV.vgg16(weights=None), IN224),
    "vgg16_bn": (lambda: TV.vgg16_bn(weights=None), IN224),
    "vgg19": (lambda: TV.vgg19(weights=None), IN224),
    "vgg19_bn": (lambda: TV.vgg19_bn(weights=None), IN224),
    "resnet18": (lambda: TV.resnet18(weights=None), IN224),
    "resnet34": (lambda: TV.resnet34(weights=None), IN224),
    "resnet50": (lambda: TV.resnet50(weights=None), IN224),
    "resnet101": (lambda: TV.resnet101(weights=None), IN224),
    "resnet152": (lambda: TV.resnet152(weights=None), IN224),
    "googlenet": (lambda: TV.googlenet(weights=None, aux_logits=False, init_weights=True), IN224),
    "mobilenet_v2": (lambda: TV.mobilenet_v2(weights=None), IN224),
    "mnasnet1_0": (lambda: TV.mnasnet1_0(weights=None), IN224),
    "resnext50_32x4d": (lambda: TV.resnext50_32x4d(weights=None), IN224),
    "wide_resnet50_2": (lambda: TV.wide_resnet50_2(weights=None), IN224),
    "squeezenet1_0": (lambda: TV.squeezenet1_0(weights=None), IN224),
    "squeezenet1_1": (lambda: TV.squeezenet1_1(weights=None), IN224),
    "efficientnet_b0": (lambda: TV.efficientnet_b0(weights=None), IN224),
    "mobilenet_v3_large": (lambda: TV.mobilenet_v3_large(weights=None), IN224),
    "shufflenet_v2_x1_0": (lambda: TV.shufflenet_v2_x1_0(weights=None), IN224),
    "convnext_tiny": (lambda: TV.convnext_tiny(weights=None), IN224),
    "densenet121": (lambda: TV.densenet121(weights=None), IN224),
    "regnet_y_400mf": (lambda: TV.regnet_y_400mf(weights=None), IN224),
    "regnet_x_400mf": (lambda: TV.regnet_x_400mf(weights=None), IN224),
    "efficientnet_v2_s": (lambda: TV.efficientnet_v2_s(weights=None), [3, 384, 384]),
    "inception_v3": (lambda: TV.inception_v3(weights=None, aux_logits=False, init_weights=True), [3, 299, 299]),
    "mnist_cnn": (MnistCNN, [1, 28, 28]),
    "lenet5": (LeNet5, [1, 32, 32]),
    "alexnet_original": (AlexNetOriginal, [3, 227, 227]),
    "zfnet": (ZFNet, IN224),
    "vgg_small": (VGGSmall, IN224),
    "googlenet_small": (GoogLeNetSmall, IN224),
    "resnet50_bottleneck": (ResNet50Bottleneck, IN224),
}

EXPECTED_PARAMS = {
    "resnet50": 25_557_032,
    "vgg16": 138_357_544,
    "googlenet": 6_624_904,
    "alexnet": 61_100_840,
    "mnist_cnn": 123_222,
    "lenet5": 61_706,
}


def analyze(name, ctor, input_shape):
    model = ctor()
    model.eval()
    names = {id(m): n for n, m in model.named_modules()}
    layers = []

    def hook(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            macs = out.numel() * (mod.in_channels // mod.groups) * kh * kw
            kind = "Conv2d"
        else:
            macs = out.numel() // mod.out_features * mod.in_features * mod.out_features
            kind = "Linear"
        layers.append([names[id(mod)], kind, int(macs), list(out.shape[1:])])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    x = torch.randn(1, *input_shape)
    with torch.no_grad():
        if name == "zfnet":
            y = model(x, trace=True)
        else:
            y = model(x)
    for h in handles:
        h.remove()
    if isinstance(y, tuple):  # defensive (e.g. GoogLeNetOutputs); should not happen in eval
        y = y[0]
    total_params = sum(p.numel() for p in model.parameters())
    if name in EXPECTED_PARAMS:
        assert total_params == EXPECTED_PARAMS[name], (name, total_params, EXPECTED_PARAMS[name])
    return {
        "input": list(input_shape),
        "output": list(y.shape[1:]),
        "total_params": int(total_params),
        "total_macs": int(sum(l[2] for l in layers)),
        "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        "layers": layers,
    }


def main():
    out_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models.json")
    result = {}
    for name, (ctor, shape) in MODELS.items():
        r = analyze(name, ctor, shape)
        result[name] = r
        print(f"{name:20s} in={r['input']} out={r['output']} params={r['total_params']} "
              f"macs={r['total_macs']} sd={len(r['state_dict'])} layers={len(r['layers'])}",
              file=sys.stderr)

    def dump(res):
        # compact: one model entry per line-ish; top level sorted, inner lists keep order
        parts = []
        for k in sorted(res):
            parts.append(json.dumps(k) + ":" + json.dumps(res[k], separators=(",", ":")))
        return "{\n" + ",\n".join(parts) + "\n}\n"

    text = dump(result)
    if len(text.encode()) > 1_500_000:
        for k in ("resnet101", "resnet152"):
            del result[k]["layers"]
        text = dump(result)
    with open(out_path, "w") as f:
        f.write(text)
    print(f"wrote {out_path} ({len(text.encode())} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
