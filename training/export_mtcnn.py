"""Export facenet-pytorch's MTCNN (P-Net, R-Net, O-Net) to ONNX for ``detector/faces.py``.

The weights ship in the facenet-pytorch 2.6.0 wheel. Each net is exported with
``torch.onnx.export(dynamo=True)``, checked with ``onnx.checker`` and compared with torch
on random input (max abs diff <= 1e-4)::

    python -m training.export_mtcnn [--out detector/models]

Outputs (names are what ``detector/faces.py`` reads):

* ``mtcnn_pnet.onnx``: ``input [N,3,H,W]`` -> ``reg [N,4,h,w]``, ``prob [N,1,h,w]`` (face
  probability; H, W >= 12)
* ``mtcnn_rnet.onnx``: ``input [N,3,24,24]`` -> ``reg [N,4]``, ``prob [N,2]``
* ``mtcnn_onet.onnx``: ``input [N,3,48,48]`` -> ``reg [N,4]``, ``landmarks [N,10]``, ``prob [N,2]``

Inputs are raw RGB pixel values (0..255, float32): facenet-pytorch's normalisation
``(x - 127.5) * 0.0078125`` is folded into the first convolution (no padding there, so exactly).

Each net is exported in an equivalent but faster form (:class:`FastPNet`, :class:`FastRNet`,
:class:`FastONet`: the same function up to float rounding, checked against the original):
ONNX Runtime cannot fuse PReLU into its convolutions, and PReLU on the full-resolution output of
the first convolution was the most expensive node of each net (see :class:`PooledPReLU`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

OPSET = 18
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "detector" / "models"
ATOL = 1e-4
CHANNEL_BLOCK = 8

# name -> (file, fixed input side or None for dynamic H/W, output names)
NETS: dict[str, tuple[str, int | None, tuple[str, ...]]] = {
    "pnet": ("mtcnn_pnet.onnx", None, ("reg", "prob")),
    "rnet": ("mtcnn_rnet.onnx", 24, ("reg", "prob")),
    "onet": ("mtcnn_onet.onnx", 48, ("reg", "landmarks", "prob")),
}


def _conv(weight: torch.Tensor, bias: torch.Tensor) -> torch.nn.Conv2d:
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]))
    conv.weight.data, conv.bias.data = weight.clone(), bias.clone()
    return conv


NORM_MEAN, NORM_SCALE = 127.5, 0.0078125


def _raw_input(conv: torch.nn.Conv2d) -> torch.nn.Conv2d:
    """``conv`` applied to raw pixels ``x`` instead of ``(x - 127.5) * 0.0078125`` (exact for an
    unpadded convolution; the scale is a power of two)."""
    w, b = conv.weight.detach(), conv.bias.detach()
    return _conv(w * NORM_SCALE, b - NORM_MEAN * NORM_SCALE * w.sum(dim=(1, 2, 3)))


def _in_order(conv: torch.nn.Conv2d, order: torch.Tensor) -> torch.nn.Conv2d:
    """``conv`` taking its input channels in ``order`` (the previous block's output order)."""
    return _conv(conv.weight.detach()[:, order], conv.bias.detach())


class PooledPReLU(torch.nn.Module):
    """``pool(prelu(conv(x)))`` computed as ``prelu'(pool(conv'(x)))`` on the pooled pixels.

    ONNX Runtime cannot fuse PReLU into a convolution, and PReLU on the full conv output was the
    most expensive node of every MTCNN net. Max-pooling commutes with a monotone function, so for
    a slope ``a >= 0`` ``pool(prelu(x)) == prelu(pool(x))``. For ``a < 0`` PReLU is V-shaped and
    the max over a window is ``max(prelu(max x), prelu(min x))``: the conv gets an extra output
    channel ``a * x`` per such channel, whose max-pool is ``a * min x``, and
    ``prelu_a(min x) == prelu_{1/a}(a * min x)``. Outputs come in channel order ``self.order``
    (non-negative slopes first): the next layer takes its input channels in that order.
    """

    def __init__(self, conv: torch.nn.Conv2d, prelu: torch.nn.PReLU, pool: torch.nn.MaxPool2d) -> None:
        super().__init__()
        a = prelu.weight.detach()
        neg = torch.nonzero(a < 0).flatten()
        self.order = torch.cat([torch.nonzero(a >= 0).flatten(), neg])
        self.n_pos, self.n_neg = len(a) - len(neg), len(neg)
        w, b, a_neg = conv.weight.detach(), conv.bias.detach(), a[neg]
        # Zero channels up to a multiple of 8, ONNX Runtime's NCHWc block on AVX2: otherwise
        # the max-pool falls back to NCHW behind a reorder.
        pad = -(len(a) + len(neg)) % CHANNEL_BLOCK
        self.conv = _conv(
            torch.cat([w[self.order], w[neg] * a_neg.view(-1, 1, 1, 1), w.new_zeros(pad, *w.shape[1:])]),
            torch.cat([b[self.order], b[neg] * a_neg, b.new_zeros(pad)]),
        )
        self.pool = pool
        self.prelu = torch.nn.PReLU(len(a) + len(neg) + pad)
        self.prelu.weight.data = torch.cat([a[self.order], 1.0 / a_neg, a.new_ones(pad)]).clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        q = self.prelu(self.pool(self.conv(x)))
        p, k = self.n_pos, self.n_neg
        if k == 0:
            return q[:, :p]
        return torch.cat([q[:, :p], torch.maximum(q[:, p : p + k], q[:, p + k : p + 2 * k])], 1)


def _dense_nchw(dense: torch.nn.Linear, order: torch.Tensor, h: int, w: int) -> torch.nn.Linear:
    """``dense`` applied to an NCHW flatten (channels in ``order``) instead of facenet's
    ``permute(0, 3, 2, 1)`` flatten, so the graph needs no Transpose."""
    c = len(order)
    weight = dense.weight.detach().view(-1, w, h, c).permute(0, 3, 2, 1)[:, order]
    out = torch.nn.Linear(c * h * w, dense.out_features)
    out.weight.data = weight.reshape(dense.out_features, -1).clone()
    out.bias.data = dense.bias.detach().clone()
    return out


class FastPNet(torch.nn.Module):
    """facenet-pytorch's P-Net, same function, faster in ONNX Runtime.

    Conv1-PReLU-pool is a :class:`PooledPReLU`; the 2-way softmax becomes one sigmoid channel
    (``softmax(z)[1] == sigmoid(z1 - z0)``), which ONNX Runtime fuses into the head convolution.
    """

    def __init__(self, pnet: torch.nn.Module) -> None:
        super().__init__()
        self.block1 = PooledPReLU(pnet.conv1, pnet.prelu1, pnet.pool1)
        self.block1.conv = _raw_input(self.block1.conv)
        self.conv2 = _in_order(pnet.conv2, self.block1.order)
        self.prelu2, self.conv3, self.prelu3 = pnet.prelu2, pnet.conv3, pnet.prelu3
        self.conv4_2 = pnet.conv4_2
        wc, bc = pnet.conv4_1.weight.detach(), pnet.conv4_1.bias.detach()
        self.face = _conv(wc[1:2] - wc[0:1], bc[1:2] - bc[0:1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        y = self.prelu3(self.conv3(self.prelu2(self.conv2(self.block1(x)))))
        return self.conv4_2(y), torch.sigmoid(self.face(y))


class FastRNet(torch.nn.Module):
    """facenet-pytorch's R-Net, same function: two :class:`PooledPReLU` blocks, NCHW dense."""

    def __init__(self, rnet: torch.nn.Module) -> None:
        super().__init__()
        self.block1 = PooledPReLU(rnet.conv1, rnet.prelu1, rnet.pool1)
        self.block1.conv = _raw_input(self.block1.conv)
        self.block2 = PooledPReLU(_in_order(rnet.conv2, self.block1.order), rnet.prelu2, rnet.pool2)
        self.conv3 = _in_order(rnet.conv3, self.block2.order)
        self.prelu3 = rnet.prelu3
        self.dense4 = _dense_nchw(rnet.dense4, torch.arange(rnet.conv3.out_channels), 3, 3)
        self.prelu4, self.dense5_1, self.softmax5_1 = rnet.prelu4, rnet.dense5_1, rnet.softmax5_1
        self.dense5_2 = rnet.dense5_2

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: D102
        x = self.prelu3(self.conv3(self.block2(self.block1(x))))
        x = self.prelu4(self.dense4(x.flatten(1)))
        return self.dense5_2(x), self.softmax5_1(self.dense5_1(x))


class FastONet(torch.nn.Module):
    """facenet-pytorch's O-Net, same function: three :class:`PooledPReLU` blocks, NCHW dense."""

    def __init__(self, onet: torch.nn.Module) -> None:
        super().__init__()
        self.block1 = PooledPReLU(onet.conv1, onet.prelu1, onet.pool1)
        self.block1.conv = _raw_input(self.block1.conv)
        self.block2 = PooledPReLU(_in_order(onet.conv2, self.block1.order), onet.prelu2, onet.pool2)
        self.block3 = PooledPReLU(_in_order(onet.conv3, self.block2.order), onet.prelu3, onet.pool3)
        self.conv4 = _in_order(onet.conv4, self.block3.order)
        self.prelu4 = onet.prelu4
        self.dense5 = _dense_nchw(onet.dense5, torch.arange(onet.conv4.out_channels), 3, 3)
        self.prelu5, self.dense6_1, self.softmax6_1 = onet.prelu5, onet.dense6_1, onet.softmax6_1
        self.dense6_2, self.dense6_3 = onet.dense6_2, onet.dense6_3

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # noqa: D102
        x = self.prelu4(self.conv4(self.block3(self.block2(self.block1(x)))))
        x = self.prelu5(self.dense5(x.flatten(1)))
        return self.dense6_2(x), self.dense6_3(x), self.softmax6_1(self.dense6_1(x))


FAST = {"pnet": FastPNet, "rnet": FastRNet, "onet": FastONet}


def _reference(net: torch.nn.Module, name: str, x: np.ndarray) -> list[np.ndarray]:
    """The original net's outputs for raw pixels ``x`` in the exported contract (P-Net: face
    probability only)."""
    with torch.no_grad():
        out = [t.numpy() for t in net((torch.from_numpy(x) - NORM_MEAN) * NORM_SCALE)]
    if name == "pnet":
        out[1] = out[1][:, 1:2]
    return out


def load_nets() -> dict[str, torch.nn.Module]:
    """facenet-pytorch's pretrained P-, R- and O-Net in eval mode on the CPU."""
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.load FutureWarnings in older torch
        nets = {"pnet": PNet(), "rnet": RNet(), "onet": ONet()}
    return {k: v.eval().cpu() for k, v in nets.items()}


def _check_inputs(side: int | None, rng: np.random.Generator) -> list[np.ndarray]:
    """Random raw-pixel inputs covering several batch sizes (and, for P-Net, shapes)."""
    if side is None:
        shapes = [(1, 3, 12, 12), (2, 3, 37, 53), (3, 3, 120, 90), (1, 3, 217, 385)]
    else:
        shapes = [(1, 3, side, side), (7, 3, side, side), (64, 3, side, side)]
    return [rng.uniform(0.0, 255.0, s).astype(np.float32) for s in shapes]


def export_net(net: torch.nn.Module, name: str, out_dir: Path, *, atol: float = ATOL) -> float:
    """Export one MTCNN net (the original facenet-pytorch module) to ``out_dir``.

    Returns the max |torch - onnx| of the original net against the ONNX file over the check
    inputs; raises ``RuntimeError`` when it exceeds ``atol``.
    """
    import onnxruntime as ort

    filename, side, outputs = NETS[name]
    path = out_dir / filename
    batch = torch.export.Dim("batch", min=1, max=4096)
    if side is None:
        example = torch.zeros(2, 3, 64, 80)
        dims = {0: batch, 2: torch.export.Dim("height", min=12, max=8192),
                3: torch.export.Dim("width", min=12, max=8192)}
    else:
        example = torch.zeros(2, 3, side, side)
        dims = {0: batch}
    exported = FAST[name](net).eval()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exported,
            (example,),
            str(path),
            input_names=["input"],
            output_names=list(outputs),
            dynamic_shapes=(dims,),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
        )
    model = onnx.load(str(path))
    model.producer_name = "facetrust"
    model.doc_string = f"MTCNN {name} from facenet-pytorch 2.6.0 (MIT); input raw RGB 0..255"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in _check_inputs(side, np.random.default_rng(0)):
        got = sess.run(list(outputs), {"input": x})
        want = _reference(net, name, x)
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape:
                raise RuntimeError(f"{name}: ONNX shape {g.shape} != torch shape {w.shape}")
            worst = max(worst, float(np.max(np.abs(g - w))))
    if not worst <= atol:
        raise RuntimeError(f"{name}: torch vs ONNX differs by {worst:.2e} > {atol:.0e}")
    return worst


def export_all(out_dir: str | Path = DEFAULT_OUT) -> dict[str, float]:
    """Export P-, R- and O-Net into ``out_dir``; returns each net's max abs difference."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return {name: export_net(net, name, out_dir) for name, net in load_nets().items()}


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (exit 2 with a message when ``--out`` cannot be a folder)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.exit(2, f"error: --out {args.out}: {exc.strerror or exc}\n")
    for name, diff in export_all(args.out).items():
        print(f"{name}: {args.out / NETS[name][0]}  max |torch - onnx| = {diff:.2e}")


if __name__ == "__main__":
    main()
