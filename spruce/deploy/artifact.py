"""A deployable artefact: the plan and the packed weights of a converted model, loadable without re-planning.

``save(model, plan, dir)`` writes::

    <dir>/manifest.json   {"version", "model": <spruce_config: builder name + kwargs>, "sparse": {fqn: {kind,
                           kernel, activation, geometry, packed: <structure>}}, "fusions": {fqn: {activation,
                           module}}, "reference": bool, "torch", "created"}
    <dir>/plan.json       the plan it was converted with (Plan.save)
    <dir>/tensors.pt      every tensor, as a flat {name: tensor} dict loadable with torch.load(weights_only=True):
                           "dense.<name>" parameters and buffers of the dense remainder, "sparse.<fqn>.<path>" the
                           packed weights and biases, "reference.input.*" / "reference.output" (optional)

``load(dir)`` rebuilds the architecture from ``spruce.models.build_model`` on the meta device (no weight
initialisation), fills the dense remainder from the file, puts a Sparse module with its packed weight in place of
every converted layer, replaces fused activations by ``nn.Identity`` and returns the model in eval mode. Packed
weights are stored as their tensors (dataclasses of ``spruce.kernels``, torch sparse CSR/BSR tensors, SciPy CSR
matrices), so loading never runs ``prepare``. ``verify=True`` checks the loaded model on the stored reference
input against the stored dense output; ``verify=<checkpoint>`` checks every layer against the checkpoint's dense
model (``spruce.deploy.verify``).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spruce.deploy.compare import DEFAULT_ATOL, DEFAULT_RTOL, first_tensor, mismatch, run_model
from spruce.deploy.fusion import apply_fusion
from spruce.deploy.modules import SPARSE_MODULES, SparseConv2d, SparseLinear
from spruce.deploy.plan import Plan
from spruce.kernels import get as get_kernel

ARTIFACT_VERSION = 1
MANIFEST, PLAN, TENSORS = "manifest.json", "plan.json", "tensors.pt"


# ---- packed weights <-> (JSON structure, tensors) ------------------------------------------------------------
def _flatten(obj: Any, key: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """JSON description of ``obj`` whose tensors go to ``tensors`` under keys starting with ``key``."""
    if isinstance(obj, torch.Tensor):
        if obj.layout == torch.strided:
            tensors[key] = obj.detach().contiguous()
            return {"t": "tensor", "key": key}
        if obj.layout in (torch.sparse_csr, torch.sparse_bsr):
            out = {"t": "sparse", "layout": "csr" if obj.layout == torch.sparse_csr else "bsr",
                   "size": list(obj.shape)}
            for part, t in (("crow", obj.crow_indices()), ("col", obj.col_indices()), ("values", obj.values())):
                tensors[f"{key}.{part}"] = t.detach().contiguous()
                out[part] = f"{key}.{part}"
            return out
        if obj.layout == torch.sparse_coo:
            c = obj.coalesce()
            for part, t in (("indices", c.indices()), ("values", c.values())):
                tensors[f"{key}.{part}"] = t.detach().contiguous()
            return {"t": "coo", "size": list(obj.shape), "indices": f"{key}.indices", "values": f"{key}.values"}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"t": "value", "v": obj}
    if isinstance(obj, (list, tuple)):
        return {"t": "list", "items": [_flatten(v, f"{key}.{i}", tensors) for i, v in enumerate(obj)]}
    if dataclasses.is_dataclass(obj) and type(obj).__module__.startswith("spruce.kernels"):
        return {"t": "dataclass", "cls": f"{type(obj).__module__}:{type(obj).__qualname__}",
                "fields": {f.name: _flatten(getattr(obj, f.name), f"{key}.{f.name}", tensors)
                           for f in dataclasses.fields(obj)}}
    if type(obj).__module__.startswith("scipy.sparse") and getattr(obj, "format", None) == "csr":
        for part in ("data", "indices", "indptr"):
            tensors[f"{key}.{part}"] = torch.from_numpy(getattr(obj, part).copy())
        return {"t": "scipy_csr", "shape": list(obj.shape)}
    raise ValueError(f"cannot save a packed weight of type {type(obj).__module__}.{type(obj).__qualname__} "
                     f"(at {key}); supported: tensors, torch sparse CSR/BSR/COO, spruce.kernels dataclasses, SciPy CSR")


def _unflatten(spec: dict[str, Any], key: str, tensors: dict[str, torch.Tensor]) -> Any:
    t = spec["t"]
    if t == "tensor":
        return tensors[spec["key"]]
    if t == "value":
        return spec["v"]
    if t == "list":
        return [_unflatten(s, f"{key}.{i}", tensors) for i, s in enumerate(spec["items"])]
    if t == "sparse":
        ctor = torch.sparse_csr_tensor if spec["layout"] == "csr" else torch.sparse_bsr_tensor
        with warnings.catch_warnings():  # torch's "sparse CSR is beta" notice, once per layer: noise at load
            warnings.simplefilter("ignore", UserWarning)
            return ctor(tensors[spec["crow"]], tensors[spec["col"]], tensors[spec["values"]], size=spec["size"])
    if t == "coo":
        return torch.sparse_coo_tensor(tensors[spec["indices"]], tensors[spec["values"]], spec["size"]).coalesce()
    if t == "dataclass":
        mod, _, qual = spec["cls"].partition(":")
        if not mod.startswith("spruce.kernels"):
            raise ValueError(f"artefact names packed class {spec['cls']!r} outside spruce.kernels")
        cls = importlib.import_module(mod)
        for part in qual.split("."):
            cls = getattr(cls, part)
        return cls(**{k: _unflatten(s, f"{key}.{k}", tensors) for k, s in spec["fields"].items()})
    if t == "scipy_csr":
        import scipy.sparse
        return scipy.sparse.csr_matrix((tensors[f"{key}.data"].numpy(), tensors[f"{key}.indices"].numpy(),
                                        tensors[f"{key}.indptr"].numpy()), shape=tuple(spec["shape"]))
    raise ValueError(f"artefact holds an unknown packed entry type {t!r}")


# ---- save ------------------------------------------------------------------------------------------------------
def _sparse_entry(m: nn.Module, fqn: str, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    key = f"sparse.{fqn}"
    e: dict[str, Any] = {"kernel": m.kernel.name, "activation": m.activation,
                         "packed": _flatten(m.packed, f"{key}.packed", tensors), "bias": m.bias is not None}
    if m.bias is not None:
        tensors[f"{key}.bias"] = m.bias.detach().contiguous()
    if isinstance(m, SparseLinear):
        e.update(kind="linear", in_features=m.in_features, out_features=m.out_features)
    else:
        e.update(kind="conv2d", in_channels=m.in_channels, out_channels=m.out_channels,
                 kernel_size=list(m.kernel_size), stride=list(m.stride), padding=list(m.padding),
                 dilation=list(m.dilation))
    return e


def save(model: nn.Module, plan: Plan, directory: str | os.PathLike, model_spec: dict[str, Any] | None = None,
         reference: tuple[object, torch.Tensor] | None = None) -> Path:
    """Write the converted ``model`` (after ``convert_(model, plan)``) to ``directory``; returns it.

    ``model_spec``: ``{"name": <spruce.models name>, <build kwargs>}`` (default ``model.spruce_config``, which
    ``spruce.models.build_model`` sets) so that :func:`load` can rebuild the architecture. ``reference``:
    ``(example input, dense output tensor)`` stored for ``load(..., verify=True)``. The directory is written
    to a temporary sibling and renamed into place, so a reader never sees half an artefact; an existing
    artefact there is replaced. ValueError when the model has no spec or a packed weight cannot be stored."""
    spec = dict(model_spec or getattr(model, "spruce_config", None) or {})
    if not spec.get("name"):
        raise ValueError("cannot save: the model has no spruce_config (build it with spruce.models.build_model) "
                         "and no model_spec was given")
    tensors: dict[str, torch.Tensor] = {}
    sparse: dict[str, dict[str, Any]] = {}
    inside: set[str] = set()
    for fqn, m in model.named_modules():
        if isinstance(m, SPARSE_MODULES):
            sparse[fqn] = _sparse_entry(m, fqn, tensors)
            inside.update(f"{fqn}.{n}" if fqn else n for n, _ in m.named_buffers())
    for n, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        if n not in inside and t is not None:
            tensors[f"dense.{n}"] = t.detach()
    if reference is not None:
        x, y = reference
        if isinstance(x, dict):
            for k, v in x.items():
                tensors[f"reference.input.{k}"] = v.detach()
        else:
            tensors["reference.input"] = x.detach()
        tensors["reference.output"] = first_tensor(y).detach()
    fusions = {k: v["fusion"] for k, v in plan.layers.items() if v.get("fusion") and k in sparse}
    manifest = {"version": ARTIFACT_VERSION, "model": spec, "sparse": sparse, "fusions": fusions,
                "reference": reference is not None, "input_kind": "dict" if isinstance((reference or [None])[0], dict)
                else "tensor", "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = Path(directory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        plan.save(tmp / PLAN)
        torch.save(tensors, tmp / TENSORS)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# ---- load ------------------------------------------------------------------------------------------------------
def _read(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not (directory / MANIFEST).is_file() or not (directory / TENSORS).is_file():
        raise ValueError(f"{str(directory)!r} is not a Spruce artefact (no {MANIFEST} / {TENSORS}); write one with "
                         f"bench.py save=<dir> or spruce.deploy.save")
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(directory / MANIFEST)!r} is not valid JSON: {e}") from None
    if manifest.get("version") != ARTIFACT_VERSION:
        raise ValueError(f"{str(directory)!r}: artefact version {manifest.get('version')!r}, this Spruce reads "
                         f"{ARTIFACT_VERSION}")
    return manifest, torch.load(directory / TENSORS, weights_only=True, map_location="cpu")


def _skeleton(spec: dict[str, Any]) -> nn.Module:
    """The architecture, with parameters on the meta device (no initialisation cost)."""
    from spruce.models import build_model
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    with torch.device("meta"):
        model = build_model(spec["name"], **kwargs)
    return model.to_empty(device="cpu")


def _set(model: nn.Module, name: str, t: torch.Tensor) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if leaf in parent._parameters:
        parent._parameters[leaf] = nn.Parameter(t, requires_grad=False)
    elif leaf in parent._buffers:
        parent._buffers[leaf] = t
    else:
        raise ValueError(f"artefact tensor {name!r} has no place in the rebuilt model (another architecture?)")


def _sparse_module(fqn: str, e: dict[str, Any], tensors: dict[str, torch.Tensor]) -> nn.Module:
    kernel = get_kernel(e["kernel"])
    ok, why = kernel.is_available()
    if not ok:
        raise ValueError(f"artefact layer {fqn!r}: kernel {e['kernel']!r} is unavailable here: {why}")
    packed = _unflatten(e["packed"], f"sparse.{fqn}.packed", tensors)
    bias = tensors[f"sparse.{fqn}.bias"] if e["bias"] else None
    if e["kind"] == "linear":
        return SparseLinear(kernel, packed, e["in_features"], e["out_features"], bias, e["activation"])
    return SparseConv2d(kernel, packed, e["in_channels"], e["out_channels"], tuple(e["kernel_size"]),
                        tuple(e["stride"]), tuple(e["padding"]), tuple(e["dilation"]), bias, e["activation"])


def reference_input(directory: str | os.PathLike) -> object:
    """The example input stored with the artefact (a tensor or a dict of tensors), or None."""
    _, tensors = _read(Path(directory))
    return _reference(tensors)[0]


def _reference(tensors: dict[str, torch.Tensor]) -> tuple[object, torch.Tensor | None]:
    if "reference.input" in tensors:
        x: object = tensors["reference.input"]
    else:
        x = {k[len("reference.input."):]: v for k, v in tensors.items() if k.startswith("reference.input.")} or None
    return x, tensors.get("reference.output")


def load(directory: str | os.PathLike, verify: bool | str | os.PathLike = False, rtol: float = DEFAULT_RTOL,
         atol: float = DEFAULT_ATOL) -> nn.Module:
    """The converted model saved in ``directory``, in eval mode, ready to serve (no planning, no ``prepare``).

    ``verify``: ``False``; ``True`` (compare the output on the stored reference input with the stored dense
    output); or a checkpoint path (rebuild its dense model and compare every layer and the output with
    :func:`spruce.deploy.verify` on the stored reference input, or on ``example_input`` when none is stored).
    Raises ValueError on a missing/foreign artefact or an unavailable kernel, ``VerificationError`` on a
    mismatch."""
    directory = Path(directory)
    manifest, tensors = _read(directory)
    model = _skeleton(manifest["model"])
    for fqn, e in manifest["sparse"].items():
        new = _sparse_module(fqn, e, tensors)
        parent_name, _, child = fqn.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    for fqn, f in manifest.get("fusions", {}).items():
        apply_fusion(model, fqn, f)
    for k, t in tensors.items():
        if k.startswith("dense."):
            _set(model, k[len("dense."):], t)
    have = {k[len("dense."):] for k in tensors if k.startswith("dense.")}
    inside = {f"{fqn}.{n}" for fqn, m in model.named_modules() if isinstance(m, SPARSE_MODULES)
              for n, _ in m.named_buffers()}
    missing = [n for n, _ in list(model.named_parameters(remove_duplicate=False))
               + list(model.named_buffers(remove_duplicate=False)) if n not in have and n not in inside]
    if missing:
        raise ValueError(f"artefact {str(directory)!r} has no value for {missing[0]!r} ({len(missing)} tensors): "
                         f"saved from another architecture?")
    model.eval()
    model.spruce_config = dict(manifest["model"])
    if verify is not False and verify is not None:
        _verify_loaded(model, tensors, verify, rtol, atol)
    return model


def _verify_loaded(model: nn.Module, tensors: dict[str, torch.Tensor], verify: bool | str | os.PathLike,
                   rtol: float, atol: float) -> None:
    from spruce.deploy.runtime import VerificationError, verify as verify_models
    x, y_ref = _reference(tensors)
    if verify is True:
        if x is None or y_ref is None:
            raise ValueError("verify=True needs the reference input/output saved with the artefact; pass a "
                             "checkpoint path instead")
        with torch.inference_mode():
            why = mismatch(first_tensor(run_model(model, x)), y_ref, rtol, atol)
        if why:
            raise VerificationError("<model output>", why)
        return
    from spruce.models.checkpoint import model_from_checkpoint
    dense, _ = model_from_checkpoint(verify)
    if x is None:
        from spruce.models import example_input
        x = example_input(dense, 1)
    verify_models(dense.eval(), model, x, rtol, atol)
