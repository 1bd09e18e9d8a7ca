"""kdverify-tinyshapes: a user's own teacher (residual CNN), student (depthwise-separable CNN), dataset
(CIFAR-10 at 16x16, from plain tensors), recipes (TOML) and claims, plugged into kdverify by entry points."""
