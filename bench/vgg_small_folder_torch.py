#!/usr/bin/env python3
"""By hand, for docs/training.md's Results: the chapter's vgg_small at
base_dim=4 in PyTorch, trained as `cnnc train` trains it on an image folder
(cnnc run's default preprocessing: Resize(256), CenterCrop(224), ImageNet
Normalize; Adam lr 1e-3, batch 16, 8 epochs), to see whether PyTorch gets
past chance where cnnc does not. Run from inside a directory holding
`train/<class>/*.png` and `val/<class>/*.png`:

    python3 bench/vgg_small_folder_torch.py

Not used by any test.
"""
import time

import torch
import torch.nn as nn
import torchvision.datasets as D
import torchvision.transforms as T

torch.manual_seed(0); torch.set_num_threads(2)
b = 4
def blk(i, o, n):
    L = []
    for k in range(n):
        L += [nn.Conv2d(i if k == 0 else o, o, 3, padding=1), nn.ReLU()]
    return L + [nn.MaxPool2d(2)]
feat = nn.Sequential(*blk(3, b, 2), *blk(b, 2*b, 2), *blk(2*b, 4*b, 3), *blk(4*b, 8*b, 3), *blk(8*b, 8*b, 3))
model = nn.Sequential(feat, nn.Flatten(), nn.Linear(8*b*49, 100), nn.ReLU(), nn.Linear(100, 20), nn.ReLU(), nn.Linear(20, 2))
tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
tr = torch.utils.data.DataLoader(D.ImageFolder('train', tf), batch_size=16, shuffle=True)
va = torch.utils.data.DataLoader(D.ImageFolder('val', tf), batch_size=40)
opt = torch.optim.Adam(model.parameters(), 1e-3)
for e in range(8):
    t = time.time(); model.train(); n = 0
    for x, y in tr:
        opt.zero_grad(); l = nn.functional.cross_entropy(model(x), y); l.backward(); opt.step(); n += len(y)
    model.eval()
    with torch.no_grad():
        x, y = next(iter(va)); o = model(x)
        print(f"epoch {e+1}: val loss {nn.functional.cross_entropy(o, y).item():.4f} acc {(o.argmax(1) == y).float().mean().item()*100:.1f}% {n/(time.time()-t):.0f} samples/s")
