"""The batch loop of an extraction: forward passes with the feature-layer hooks, attacks, hand-off to the writer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import attacks as _attacks
from ..._util import torch as _torch_util
from ...errors import ConfigError, SchemaError
from ..models import _Capture, _LayerCapture, _OutputCheck
from ..models import eval_mode as _eval_mode
from .options import _Job, _chunk_generator
from .writer import _Writer, _encode_features


def _named_module(model: nn.Module, name: str) -> nn.Module:
    """Submodule ``name`` of ``model`` (or of the network inside a `causalgeom.pipeline.models.NormalizedClassifier`)."""
    modules = dict(model.named_modules())
    inner = getattr(model, "net", None)
    if isinstance(name, str) and name not in modules and isinstance(inner, nn.Module):
        modules.update({k: m for k, m in inner.named_modules() if k and k not in modules})
    if not isinstance(name, str) or name not in modules or not name:
        names = [n for n in modules if n]
        raise ConfigError(f"feature_layer={name!r}: {type(model).__name__} has no submodule of that name; its "
                          f"modules include {names[:8]} ... {names[-8:]}")
    return modules[name]


def _probe_layer(model: nn.Module, source: Any, n: int, layer: tuple[str, nn.Module], head: nn.Linear,
                 dev: torch.device) -> tuple[int, bool]:
    """(feature width, whether the layer's pooled output is exactly the head's input) from one forward pass
    of the first two samples."""
    name, mod = layer
    _, _, xb, _ = next(iter(source.batches([(0, 0, min(n, 2))], pin=False)))
    out_cap, head_cap = _LayerCapture(mod, name, head), _Capture(head)
    try:
        model.to(dev)
        with torch.no_grad(), _eval_mode(model), out_cap.on(), head_cap.on():
            model(xb.to(dev).float())
    finally:
        out_cap.remove()
        head_cap.remove()
    if out_cap.calls != 1:
        raise ConfigError(f"feature_layer={name!r}: the module was called {out_cap.calls} times in one forward "
                          "pass, expected exactly once")
    h, z = out_cap.value, head_cap.value
    feeds = isinstance(z, torch.Tensor) and z.shape == h.shape and torch.equal(z, h)
    return int(h.shape[1]), bool(feeds)


def _run(model: nn.Module, source: Any, job: _Job) -> None:
    """Compute the chunks ``job.todo`` and hand them to the writer thread."""
    out, todo, chunk, n, layout = job.out, job.todo, job.chunk, job.n, job.layout
    atks, grid, head_name, head_mod, dev = job.attacks, job.grid, job.head_name, job.head, job.device
    amp_clean, amp_attack, save_adv, base_seed = job.amp_clean, job.amp_attack, job.save_adv, job.base_seed
    progress, queue_size, run_id, prepare = job.progress, job.queue_size, job.run_id, job.prepare
    bounds = {c: (c * chunk, min(n, (c + 1) * chunk)) for c in todo}
    spans = [(c, *bounds[c]) for c in todo]
    cuda = dev.type == "cuda"
    model.to(dev)
    for a in atks:
        a.to(dev)
    capture = _Capture(head_mod) if job.layer is None else _LayerCapture(job.layer[1], job.layer[0], head_mod)
    check: _OutputCheck | None = _OutputCheck(head_mod)
    writer = _Writer(out, layout, bounds, queue_size, finite=("features", "logits"), prepare=prepare)
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(e - s for _, s, e in spans), desc=f"extract {run_id}", unit="sample",
                       dynamic_ncols=True, leave=False)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    gens: dict[int, torch.Generator] = {}
    failed = False
    try:
        with _eval_mode(model):
            for c, offset, xb, yb in source.batches(spans, pin=cuda):
                x = xb.to(dev, non_blocking=True).float()
                y = yb.to(dev, non_blocking=True)
                if check is not None:
                    if atks and (float(x.min()) < -1e-6 or float(x.max()) > 1 + 1e-6):
                        raise ConfigError(f"data: inputs must be pixel values in [0, 1] for attacks (normalization "
                                          f"belongs inside the model), got range [{float(x.min()):.4g}, "
                                          f"{float(x.max()):.4g}]")
                    if int(yb.min()) < 0 or int(yb.max()) >= head_mod.out_features:
                        raise SchemaError(f"variable 'label': values must lie in [0, {head_mod.out_features}), got "
                                          f"range [{int(yb.min())}, {int(yb.max())}]")
                    with torch.no_grad(), capture.on(), _torch_util.autocast(dev, amp_clean):
                        model_out = model(x)
                    check.check(model_out, head_name, type(model).__name__)
                    check.remove()
                    check = None
                    feats = capture.value.float()
                    if amp_clean:
                        logits = torch.nn.functional.linear(feats, head_mod.weight.float(),
                                                            None if head_mod.bias is None else head_mod.bias.float())
                    else:
                        logits = model_out.float()
                else:
                    logits, feats = _attacks._evaluate(model, x, capture, amp_clean)
                res: dict[str, torch.Tensor] = {
                    "features": _encode_features(feats, job.features_dtype, run_id, c * chunk + offset),
                    "logits": logits}
                if atks:
                    g = gens.get(c)
                    if g is None:
                        gens.clear()
                        g = gens[c] = _chunk_generator(base_seed, c, dev)
                    adv = _attacks._sweep_batch(model, x, y, atks, grid, logits, feats if save_adv else None,
                                                capture=capture if save_adv else None, generator=g, amp=amp_attack,
                                                keep_adv=save_adv)
                    res.update(adv)
                if cuda:
                    tensors = {k: v.detach().to("cpu", non_blocking=True) for k, v in res.items()}
                    event = torch.cuda.Event()
                    event.record()
                else:
                    tensors = {k: v.detach() for k, v in res.items()}
                    event = None
                tensors["label"] = yb.long().cpu()
                writer.put((c, offset, tensors, event))
                if bar is not None:
                    bar.update(int(yb.shape[0]))
    except BaseException:
        failed = True
        raise
    finally:
        capture.remove()
        if check is not None:
            check.remove()
        if bar is not None:
            bar.close()
        try:
            writer.close()  # writes every chunk already complete in the queue, even after an error
        except BaseException:
            if not failed:
                raise
            # the compute loop's error is already propagating; the writer's (often the same) is secondary
