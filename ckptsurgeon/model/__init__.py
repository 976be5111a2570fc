"""What works on a live ``nn.Module``: building it from ``module:callable``, tied weights, inspection,
freezing, BatchNorm policies, optimizer parameter groups and the unfreeze schedule."""
