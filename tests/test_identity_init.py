"""make_identity: inserted blocks start as the identity (residual, gate, dirac), or nothing changes and the
reason says why. Every block is randomised first (weights, BatchNorm statistics and affine), so a pass is
not the blocks' default initialisation at work."""

from __future__ import annotations

import math
from typing import Callable, TypeVar

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
import torch.nn.functional as F
from torch import nn

from ckptsurgeon.errors import MappingError, OptionError
from ckptsurgeon.examples.attention import CBAM, ECA, SEBlock
from ckptsurgeon.model.identity import IdentityInit, identity_for, make_identity

def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


OPEN = 1.0 - sigmoid(5.0)      # one gate opened with the default gate_bias


M = TypeVar("M", bound=nn.Module)


def randomise(module: M, seed: int = 0) -> M:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in module.parameters():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.5)
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) * 2 + 0.5)
    return module


def relative_error(module: nn.Module, shape: tuple[int, ...], seed: int = 1) -> float:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
    module.eval()
    with torch.no_grad():
        out = module(x)
    return float((out - x).abs().max() / x.abs().max())


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


def unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = module.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


# --- tiny blocks, one situation each -----------------------------------------------------------------------

class ResidualBlock(nn.Module):
    """ResNet-style: x + bn(conv(relu(bn(conv(x)))))."""

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch: torch.Tensor = self.branch(x)
        return x + branch


class PostActivationBlock(ResidualBlock):
    """The original ResNet block: relu(x + f(x)), not the identity for negative inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch: torch.Tensor = self.branch(x)
        return F.relu(x + branch)


class SigmoidBranch(ResidualBlock):
    """x + sigmoid(f(x)): with f's last layer at 0 the branch adds 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch: torch.Tensor = self.branch(x)
        return x + torch.sigmoid(branch)


class ResidualAdapter(nn.Module):
    """A bottleneck adapter on token features, its sum written four ways."""

    def __init__(self, style: str, dim: int = 8) -> None:
        super().__init__()
        self.style = style
        self.down, self.up = nn.Linear(dim, 3), nn.Linear(3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f: torch.Tensor = self.up(F.gelu(self.down(x)))
        if self.style == "f+x":
            return f + x
        if self.style == "torch.add":
            return torch.add(x, f)
        if self.style == "+=":
            f += x
            return f
        return x + f


class BiasedSE(nn.Module):
    """SEBlock with biases: x * sigmoid(fc(mean(x)))."""

    def __init__(self, channels: int = 8, hidden: int = 2, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), gate())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[0], x.shape[1]
        gate: torch.Tensor = self.fc(x.mean(dim=(2, 3)))
        return x * gate.view(b, c, 1, 1)


class BiasedCBAM(nn.Module):
    """CBAM with biases: a channel gate (one MLP on the average- and max-pooled vectors), then a spatial gate."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, 2), nn.ReLU(), nn.Linear(2, channels))
        self.spatial = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean: torch.Tensor = self.mlp(x.mean(dim=(2, 3)))
        channel = torch.sigmoid(mean + self.mlp(x.amax(dim=(2, 3))))
        x = x * channel[:, :, None, None]
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        spatial: torch.Tensor = self.spatial(pooled)
        return x * F.sigmoid(spatial)


class Softmaxed(nn.Module):
    """A square Linear followed by a softmax: no identity structure."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(x)
        return out.softmax(dim=-1)


class SharedLinear(nn.Module):
    """lin(x) + lin(relu(x)): the spine wants lin as eye, the branch wants it 0."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(x) + self.lin(F.relu(x))
        return out


class TiedAdapter(nn.Module):
    """x + b(relu(a(x))) where b.weight is a.weight: zeroing b would zero a."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch: torch.Tensor = self.b(F.relu(self.a(x)))
        return x + branch


class UntraceableConv(nn.Conv2d):
    """A Conv2d whose forward branches on the input's rank: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x[None]
        out: torch.Tensor = super().forward(x)
        return out


IMAGE = (4, 6, 9, 9)
GATED = (4, 8, 9, 9)     # the gates' 8 channels


def conv_bn(channels: int = 6, act: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1), nn.BatchNorm2d(channels)]
    return nn.Sequential(*layers, nn.ReLU()) if act else nn.Sequential(*layers)


# --- residual -----------------------------------------------------------------------------------------------

def test_residual_block_zeroes_the_last_batchnorm_only() -> None:
    block = randomise(ResidualBlock())
    before = snapshot(block)
    result = make_identity(block)
    assert result == IdentityInit("", "ResidualBlock", "residual", True, ("branch.4.weight", "branch.4.bias"), 0.0,
                                  "x + f(x): branch.4 (BatchNorm2d) weight and bias set to 0, so f(x) = 0")
    assert relative_error(block, IMAGE) <= 1e-5
    after = block.state_dict()
    assert torch.count_nonzero(after["branch.4.weight"]) == 0 and torch.count_nonzero(after["branch.4.bias"]) == 0
    kept = [k for k in before if k not in ("branch.4.weight", "branch.4.bias")]
    assert all(torch.equal(after[k], before[k]) for k in kept)     # the rest of the branch keeps its values


def test_residual_block_can_still_learn() -> None:
    block = randomise(ResidualBlock())
    make_identity(block)
    block.eval()
    x = torch.randn(IMAGE, generator=torch.Generator().manual_seed(2))
    (block(x) * torch.randn(IMAGE, generator=torch.Generator().manual_seed(3))).sum().backward()
    last = block.branch[4]
    assert isinstance(last, nn.BatchNorm2d) and last.weight.grad is not None and last.weight.grad.abs().max() > 0


@pytest.mark.parametrize("style", ["x+f", "f+x", "torch.add", "+="])
def test_residual_adapter_zeroes_its_last_linear(style: str) -> None:
    adapter = randomise(ResidualAdapter(style))
    result = make_identity(adapter)
    assert (result.kind, result.ok, result.tensors, result.expected_error) == (
        "residual", True, ("up.weight", "up.bias"), 0.0)
    assert result.reason == "x + f(x): up (Linear) weight and bias set to 0, so f(x) = 0"
    assert relative_error(adapter, (5, 7, 8)) <= 1e-5
    assert torch.equal(adapter.down.weight, randomise(ResidualAdapter(style)).down.weight)


@pytest.mark.parametrize("block, reason", [
    (PostActivationBlock, "relu after add is not the identity: relu(-1) = 0, not -1"),
    (SigmoidBranch, "with branch.4 (BatchNorm2d) set to 0 the branch f(x) is sigmoid(0) = 0.5, not 0, "
                    "so x + f(x) is not x"),
])
def test_residual_refusals_change_nothing(block: Callable[[], nn.Module], reason: str) -> None:
    module = randomise(block())
    before = snapshot(module)
    result = make_identity(module)
    assert (result.kind, result.ok, result.tensors, result.expected_error, result.reason) == (
        "residual", False, (), None, reason)
    assert unchanged(module, before)


# --- gates --------------------------------------------------------------------------------------------------

def test_se_with_bias_opens_its_gate() -> None:
    se = randomise(BiasedSE())
    result = make_identity(se)
    assert (result.kind, result.ok, result.tensors) == ("gate", True, ("fc.2.weight", "fc.2.bias"))
    assert result.expected_error == pytest.approx(OPEN, rel=1e-12)
    assert result.reason == "x * sigmoid(g(x)): fc.2 (Linear) weight 0 and bias 5, so the gate starts at 0.9933"
    error = relative_error(se, GATED)
    assert error <= 1e-2 and error == pytest.approx(result.expected_error, rel=1e-5)
    last = se.fc[2]
    assert isinstance(last, nn.Linear) and torch.count_nonzero(last.weight) == 0 and bool(torch.all(last.bias == 5.0))


def test_open_gate_can_still_learn() -> None:
    se = randomise(BiasedSE())
    make_identity(se)
    se.eval()
    x = torch.randn(GATED, generator=torch.Generator().manual_seed(2))
    se(x).pow(2).sum().backward()
    last = se.fc[2]
    assert isinstance(last, nn.Linear)
    grad = last.bias.grad
    assert grad is not None and grad.abs().min() > 0      # every channel's gate can move


def test_gate_bias_sets_how_open() -> None:
    se = randomise(BiasedSE())
    result = make_identity(se, gate_bias=8.0)
    assert result.expected_error == pytest.approx(1 - sigmoid(8.0), rel=1e-12)
    assert relative_error(se, GATED) == pytest.approx(result.expected_error, rel=1e-3)


def test_cbam_gates_chain_and_a_shared_mlp_adds_its_bias_twice() -> None:
    cbam = randomise(BiasedCBAM())
    result = make_identity(cbam)
    assert (result.kind, result.ok) == ("gate", True)
    assert result.tensors == ("mlp.2.weight", "mlp.2.bias", "spatial.weight", "spatial.bias")
    assert result.expected_error == pytest.approx(1 - sigmoid(10.0) * sigmoid(5.0), rel=1e-12)
    assert result.reason == ("x * sigmoid(g(x)): mlp.2 (Linear) weight 0 and bias 5, so the gate starts at 1.0000; "
                             "x * sigmoid(g(x)): spatial (Conv2d) weight 0 and bias 5, so the gate starts at 0.9933")
    error = relative_error(cbam, GATED)
    assert error <= 1e-2 and error == pytest.approx(result.expected_error, rel=1e-4)


def test_two_chained_gates_multiply() -> None:
    chain = randomise(nn.Sequential(BiasedSE(), BiasedSE()))
    result = make_identity(chain)
    assert result.ok and result.tensors == ("0.fc.2.weight", "0.fc.2.bias", "1.fc.2.weight", "1.fc.2.bias")
    assert result.expected_error == pytest.approx(1 - (1 - OPEN) ** 2, rel=1e-12)     # 0.0133: above 1e-2
    assert relative_error(chain, GATED) == pytest.approx(result.expected_error, rel=1e-4)
    wider = make_identity(chain, gate_bias=6.0).expected_error
    assert wider is not None and wider < 1e-2    # a larger bias for a chain


NO_BIAS = "has no bias: a sigmoid gate without a bias scales by sigmoid(W·z), 0.5 at W = 0, and no weights make " \
          "it 1 for every input"


@pytest.mark.parametrize("block, leaf", [
    (lambda: SEBlock(8, 4), "fc.2"),
    (lambda: ECA(8), "conv"),
    (lambda: CBAM(8, 4), "channel.mlp.2"),
])
def test_bias_free_gates_are_refused(block: Callable[[], nn.Module], leaf: str) -> None:
    module = randomise(block())
    before = snapshot(module)
    result = make_identity(module)
    assert (result.kind, result.ok, result.tensors, result.expected_error) == ("gate", False, (), None)
    assert result.reason == f"{leaf} {NO_BIAS}"
    assert unchanged(module, before)


def test_identity_for_names_the_path() -> None:
    model = nn.Sequential()
    model.add_module("feat1_att", SEBlock(8, 4))
    model.add_module("head", nn.Conv2d(8, 8, 1))
    randomise(model)
    before = snapshot(model)
    result = identity_for(model, "feat1_att")
    assert (result.module, result.module_type) == ("feat1_att", "SEBlock")
    assert result.reason == ("feat1_att.fc.2 has no bias: a sigmoid gate without a bias scales by sigmoid(W·z), "
                             "0.5 at W = 0, and no weights make it 1 for every input")
    assert unchanged(model, before)
    head = identity_for(model, "head")
    assert (head.ok, head.tensors, head.reason) == (True, ("weight", "bias"), "head (Conv2d): dirac weight, bias 0")


def test_a_saturated_gate_is_refused_and_a_smaller_bias_opens_it() -> None:
    se = randomise(BiasedSE(gate=nn.Hardsigmoid))
    before = snapshot(se)
    result = make_identity(se)
    assert (result.ok, result.kind) == (False, "gate")
    assert result.reason == ("with fc.2 (Linear) at weight 0 and bias 5 the gate starts at 1 with gradient 0, "
                             "so it could never learn; choose a smaller gate_bias")
    assert unchanged(se, before)
    result = make_identity(se, gate_bias=2.95)      # hardsigmoid(2.95) = 5.95 / 6
    assert result.ok and result.expected_error == pytest.approx(1 - 5.95 / 6, rel=1e-9)
    assert relative_error(se, GATED) == pytest.approx(result.expected_error, rel=1e-4)


# --- dirac --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("conv, shape", [
    (nn.Conv2d(6, 6, 3, padding=1), IMAGE),
    (nn.Conv2d(6, 6, 3, padding=2, dilation=2, padding_mode="reflect"), IMAGE),
    (nn.Conv2d(6, 6, 5, padding="same", bias=False), IMAGE),
    (nn.Conv2d(6, 6, 3, padding=1, groups=6), IMAGE),          # depthwise
    (nn.Conv2d(6, 6, 1, groups=2), IMAGE),
    (nn.Conv1d(6, 6, 3, padding=1), (4, 6, 11)),
    (nn.Conv3d(6, 6, 3, padding=1), (2, 6, 5, 5, 5)),
])
def test_channel_keeping_convs_become_dirac(conv: nn.Module, shape: tuple[int, ...]) -> None:
    conv = randomise(conv)
    result = make_identity(conv)
    assert (result.kind, result.ok, result.expected_error) == ("dirac", True, 0.0)
    assert result.tensors == (("weight", "bias") if conv.bias is not None else ("weight",))
    assert relative_error(conv, shape) <= 1e-5


def test_square_linear_becomes_the_identity_matrix() -> None:
    linear = randomise(nn.Linear(8, 8))
    result = make_identity(linear)
    assert result == IdentityInit("", "Linear", "dirac", True, ("weight", "bias"), 0.0,
                                  "Linear: identity weight, bias 0")
    assert relative_error(linear, (5, 8)) <= 1e-5


def test_conv_bn_passes_through_in_eval_mode() -> None:
    block = randomise(conv_bn())
    result = make_identity(block)
    assert (result.kind, result.ok, result.expected_error) == ("dirac", True, 0.0)
    assert result.tensors == ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var")
    assert result.reason == ("0 (Conv2d): dirac weight, bias 0; 1 (BatchNorm2d): weight 1, bias 0, running_mean 0, "
                             "running_var 1 - eps (the identity in eval mode)")
    assert relative_error(block, IMAGE) <= 1e-5
    bn = block[1]
    assert isinstance(bn, nn.BatchNorm2d) and bn.running_var is not None
    assert bool(torch.all(bn.running_var + bn.eps == 1.0))


@pytest.mark.parametrize("module, kind, reason", [
    (lambda: conv_bn(act=True), "dirac", "2 (ReLU) after 1 (BatchNorm2d) is not the identity: relu(-1) = 0, not -1"),
    (lambda: nn.Conv2d(6, 8, 3, padding=1), "dirac", "Conv2d maps 6 channels to 8: no weights make it the identity"),
    (lambda: nn.Conv2d(6, 6, 3, stride=2, padding=1), "dirac", "Conv2d has stride (2, 2): it changes the size"),
    (lambda: nn.Conv2d(6, 6, 2), "dirac", "Conv2d has an even kernel (2, 2): no centre tap can copy the input"),
    (lambda: nn.Conv2d(6, 6, 3), "dirac",
     "Conv2d has padding (0, 0): it changes the size (the identity needs (1, 1))"),
    (lambda: nn.Linear(8, 6), "dirac", "Linear maps 8 features to 6: only a square Linear can be the identity"),
    (lambda: nn.LayerNorm(8), "none", "LayerNorm normalises its input: no weights make it the identity"),
    (lambda: Softmaxed(), "none", "softmax is on the path from the input to the output and is not a residual sum, "
                                  "a gate, a channel-keeping layer or the identity"),
    (lambda: SharedLinear(), "residual", "lin.weight would need two values (eye and zeros): its layer is called at "
                                         "two places that need different ones"),
    (lambda: TiedAdapter(), "residual", "b.weight is also registered as a.weight (tied): setting it would change "
                                        "that too"),
])
def test_refusals_change_nothing(module: Callable[[], nn.Module], kind: str, reason: str) -> None:
    block = randomise(module())
    before = snapshot(block)
    result = make_identity(block)
    assert (result.kind, result.ok, result.tensors, result.expected_error, result.reason) == (
        kind, False, (), None, reason)
    assert unchanged(block, before)


# --- tracing and its fallback -------------------------------------------------------------------------------

def test_untraceable_module_of_unknown_type_is_refused() -> None:
    lstm = randomise(nn.LSTM(4, 4))
    before = snapshot(lstm)
    result = make_identity(lstm)
    assert (result.kind, result.ok) == ("none", False)
    assert result.reason == ("torch.fx could not trace LSTM (TraceError: symbolically traced variables cannot be "
                             "used as inputs to control flow); untraceable modules are read only by type (a conv, "
                             "linear, norm, activation, dropout or Sequential), and it is none of these")
    assert unchanged(lstm, before)


def test_untraceable_subclass_is_read_by_its_type_and_says_so() -> None:
    block = randomise(nn.Sequential(UntraceableConv(6, 6, 3, padding=1), nn.BatchNorm2d(6)))
    result = make_identity(block)
    assert (result.kind, result.ok, result.expected_error) == ("dirac", True, 0.0)
    assert result.reason.startswith("torch.fx could not trace Sequential (TraceError: ")
    assert "; read as a Sequential of its children; torch.fx could not trace UntraceableConv (TraceError: " \
           in result.reason
    assert result.reason.endswith("; read by its type as Conv2d; 0 (UntraceableConv): dirac weight, bias 0; "
                                  "1 (BatchNorm2d): weight 1, bias 0, running_mean 0, running_var 1 - eps "
                                  "(the identity in eval mode)")
    assert relative_error(block, IMAGE) <= 1e-5


def test_identity_module_needs_nothing() -> None:
    assert make_identity(nn.Identity()) == IdentityInit("", "Identity", "none", True, (), 0.0,
                                                        "Identity is already the identity: nothing to set")


@pytest.mark.parametrize("gate_bias", [0.0, -1.0, math.inf, math.nan])
def test_gate_bias_must_be_positive_and_finite(gate_bias: float) -> None:
    with pytest.raises(OptionError, match="gate_bias must be a finite number > 0"):
        make_identity(BiasedSE(), gate_bias=gate_bias)


def test_identity_for_unknown_path() -> None:
    with pytest.raises(MappingError, match=r"no module 'neck\.att' in Sequential"):
        identity_for(nn.Sequential(nn.Linear(2, 2)), "neck.att")


@settings(max_examples=40, deadline=None)
@given(dims=st.integers(1, 3), channels=st.sampled_from([1, 2, 4, 6]), out=st.sampled_from([None, 3]),
       kernel=st.integers(1, 4), dilation=st.integers(1, 2), stride=st.integers(1, 2), pad_shift=st.integers(-1, 1),
       depthwise=st.booleans(), bias=st.booleans())
def test_any_conv_is_either_the_identity_or_untouched(dims: int, channels: int, out: int | None, kernel: int,
                                                      dilation: int, stride: int, pad_shift: int, depthwise: bool,
                                                      bias: bool) -> None:
    conv_type = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    out_channels = out or channels
    groups = channels if depthwise and out_channels % channels == 0 else 1
    padding = max(0, dilation * (kernel - 1) // 2 + pad_shift)
    conv = randomise(conv_type(channels, out_channels, kernel, stride=stride, padding=padding, dilation=dilation,
                               groups=groups, bias=bias))
    before = snapshot(conv)
    result = make_identity(conv)
    keeps = (out_channels == channels and kernel % 2 == 1 and stride == 1
             and padding == dilation * (kernel - 1) // 2)
    assert result.ok == keeps and result.kind == "dirac"
    if keeps:
        assert relative_error(conv, (2, channels) + (7,) * dims) <= 1e-5
    else:
        assert unchanged(conv, before) and result.expected_error is None


class DropPath(nn.Module):
    """timm-style stochastic depth: random in training, the identity in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = torch.rand(x.shape[0], 1, 1) > 0.1
        return x * keep / 0.9


class TransformerMlpBlock(nn.Module):
    """x + drop_path(gamma * mlp(norm(x))): layer scale, dropout and drop path around the branch."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.GELU(), nn.Dropout(0.1), nn.Linear(16, dim), nn.Dropout(0.1))
        self.gamma = nn.Parameter(torch.full((dim,), 0.1))
        self.drop_path = DropPath()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch: torch.Tensor = self.drop_path(self.gamma * self.mlp(self.norm(x)))
        return x + branch


def test_transformer_block_traced_in_eval_mode_keeps_its_training_flags() -> None:
    block = randomise(TransformerMlpBlock())
    block.train()
    block.norm.eval()
    result = make_identity(block)
    assert (result.kind, result.ok, result.tensors) == ("residual", True, ("mlp.3.weight", "mlp.3.bias"))
    assert [m.training for m in block.modules()] == [m is not block.norm for m in block.modules()]
    assert relative_error(block, (3, 5, 8)) <= 1e-5
