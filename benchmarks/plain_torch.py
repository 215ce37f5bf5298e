"""The notebook's network in plain PyTorch, no Keras: the reference for what batch norm costs.

Same layers as `keras_bn.deep_mnist_model` (19 3x3 convolutions, layer `d` with `4 * d`
filters, stride 2 every third; `Dense(100)`; `Dense(10)` logits), NCHW, with
`nn.BatchNorm2d`/`nn.BatchNorm1d` (epsilon 1e-3, Keras's momentum 0.99) or biases
and no normalization; Adam with TF1's defaults and the sigmoid cross-entropy.
Padding is 1 on every side: the feature maps have Keras's `"same"` sizes
(28, 14, 7, 4, 2, 1), which is all a timing needs.
"""

import torch
from torch import nn


def plain_torch_model(bn, device="cpu"):
    """Returns `(model, optimizer, loss_fn)` for the notebook's network, with `nn.BatchNorm` if `bn`, on `device`."""
    layers, channels = [], 1
    for depth in range(1, 20):
        layers.append(
            nn.Conv2d(channels, 4 * depth, 3, stride=2 if depth % 3 == 0 else 1, padding=1, bias=not bn)
        )
        if bn:
            layers.append(nn.BatchNorm2d(4 * depth, eps=1e-3, momentum=0.01))
        layers.append(nn.ReLU())
        channels = 4 * depth
    layers += [nn.Flatten(), nn.Linear(channels, 100, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm1d(100, eps=1e-3, momentum=0.01))
    layers += [nn.ReLU(), nn.Linear(100, 10)]
    model = nn.Sequential(*layers).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.002, betas=(0.9, 0.999), eps=1e-8)
    return model, optimizer, nn.BCEWithLogitsLoss()


def plain_torch_step(model, optimizer, loss_fn, images, labels):
    """One training step on NCHW `images` and one-hot `labels`; returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss
