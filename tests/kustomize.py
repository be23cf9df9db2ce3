"""The subset of kustomize that deploy/kubernetes/ uses, in Python: CI renders the overlays
without kubectl. Any other kustomization field is refused by name, so an overlay that starts
using one fails here instead of being rendered wrongly.

Supported: `resources` (files, or folders holding a kustomization.yaml), `namespace`,
`labels` (pairs set on metadata.labels only, as kustomize does without includeSelectors),
`images` (newName, newTag, digest), `configMapGenerator` and `secretGenerator` with `files`
(`KEY=PATH` or `PATH`), `namespace` and `behavior` (`create`, the default, refuses a name a
resource already generated; `merge` puts its keys over the resource's; `replace` keeps only
its own; both need the generator to name the namespace the resource's object is in, since
kustomize matches them by namespace too and versions differ on an unnamed one),
`generatorOptions: {disableNameSuffixHash: true}` (a name hash would need every reference
rewritten), and `patches` given by `path`, one patch per file as
kustomize requires (strategic merge: maps merged; the lists below merged by their key, as
Kubernetes' patch strategy says for those fields; any other list replaced, and every list of
a custom resource, which kustomize patches as a JSON merge patch).
"""
from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

# the Kubernetes fields with patchStrategy merge that our manifests use, and their merge key
MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": "containerPort"}
FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "configMapGenerator",
          "secretGenerator", "generatorOptions", "patches"}


class KustomizeError(ValueError):
    pass


def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def render(folder: Path) -> list[dict]:
    """The objects `kustomize build folder` would print (for the fields above)."""
    kfile = folder / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unknown = set(k) - FIELDS
    if unknown:
        raise KustomizeError(f"{kfile}: fields this renderer does not implement: {sorted(unknown)}")
    objs: list[dict] = []
    for res in k.get("resources", []):
        p = (folder / res).resolve()
        objs += render(p) if p.is_dir() else load_docs(p)
    opts = k.get("generatorOptions", {})
    if (k.get("configMapGenerator") or k.get("secretGenerator")) and opts != {"disableNameSuffixHash": True}:
        raise KustomizeError(f"{kfile}: generators need generatorOptions: {{disableNameSuffixHash: true}}")
    for gen in k.get("configMapGenerator", []):
        _generate(objs, gen, kfile, {"apiVersion": "v1", "kind": "ConfigMap"},
                  {key: p.read_text() for key, p in _files(folder, gen)})
    for gen in k.get("secretGenerator", []):
        _generate(objs, gen, kfile, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque"},
                  {key: base64.b64encode(p.read_bytes()).decode() for key, p in _files(folder, gen)})
    for patch in k.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"{kfile}: only patches given by path are implemented: {patch}")
        docs = load_docs(folder / patch["path"])
        if len(docs) != 1:  # kustomize: one patch per path (kubernetes-sigs/kustomize#3929)
            raise KustomizeError(f"{kfile}: {patch['path']} holds {len(docs)} patches, kustomize takes one")
        _apply_patch(objs, docs[0], kfile)
    for label in k.get("labels", []):
        if set(label) != {"pairs"}:
            raise KustomizeError(f"{kfile}: labels: only pairs are implemented")
        for o in objs:
            o.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    for img in k.get("images", []):
        _set_image(objs, img)
    if "namespace" in k:
        for o in objs:
            o.setdefault("metadata", {})["namespace"] = k["namespace"]
    return objs


def _generate(objs: list[dict], gen: dict, kfile: Path, head: dict, data: dict) -> None:
    behavior = gen.get("behavior", "create")
    same = [o for o in objs if o["kind"] == head["kind"] and o["metadata"]["name"] == gen["name"]]
    if behavior == "create":
        if same:
            raise KustomizeError(f"{kfile}: {head['kind']} {gen['name']} already exists in a resource "
                                 "(behavior: merge or replace)")
        meta = {"name": gen["name"], **({"namespace": gen["namespace"]} if "namespace" in gen else {})}
        objs.append({**head, "metadata": meta, "data": data})
    elif behavior in ("merge", "replace"):
        if len(same) != 1:
            raise KustomizeError(f"{kfile}: behavior {behavior} needs one {head['kind']} {gen['name']} "
                                 f"from a resource, found {len(same)}")
        if same[0]["metadata"].get("namespace") != gen.get("namespace"):
            raise KustomizeError(f"{kfile}: generator {gen['name']} must name the namespace of the object it "
                                 f"merges into: namespace: {same[0]['metadata'].get('namespace')}")
        same[0]["data"] = ({**same[0]["data"], **data} if behavior == "merge" else data)
    else:
        raise KustomizeError(f"{kfile}: generator {gen['name']}: behavior {behavior!r} is not create, merge "
                             "or replace")


def _files(folder: Path, gen: dict) -> list[tuple[str, Path]]:
    if set(gen) - {"name", "namespace", "files", "behavior"}:
        raise KustomizeError(f"generator {gen['name']}: only name, namespace, files and behavior are implemented")
    out = []
    for f in gen["files"]:
        key, _, rel = f.rpartition("=")
        p = folder / rel
        if not p.is_file():
            raise KustomizeError(f"generator {gen['name']}: no file {p}")
        out.append((key or p.name, p))
    return out


def _apply_patch(objs: list[dict], patch: dict, where: Path) -> None:
    hits = [o for o in objs if o["kind"] == patch["kind"] and o["metadata"]["name"] == patch["metadata"]["name"]]
    if len(hits) != 1:
        raise KustomizeError(f"{where}: patch for {patch['kind']}/{patch['metadata']['name']} matches {len(hits)}")
    merged = merge(hits[0], patch, custom=_is_custom(patch["apiVersion"]))
    hits[0].clear()
    hits[0].update(merged)


def _is_custom(api_version: str) -> bool:
    """A custom resource's apiVersion names a group with a dot outside *.k8s.io."""
    group = api_version.rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def merge(base: Any, patch: Any, field: str | None = None, *, custom: bool = False) -> Any:
    """Strategic merge of `patch` into `base` (a copy); for a custom resource, whose schema
    kustomize does not know, a JSON merge patch: every list replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            out[k] = merge(base[k], v, k, custom=custom) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS and not custom:
        key = MERGE_KEYS[field]
        out = copy.deepcopy(base)
        for item in patch:
            same = [i for i, b in enumerate(out) if b.get(key) == item.get(key)]
            if same:
                out[same[0]] = merge(out[same[0]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _set_image(objs: list[dict], img: dict) -> None:
    for o in objs:
        spec = o.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if c["image"].split("@")[0].split(":")[0] == img["name"]:
                ref = img.get("newName", img["name"])
                if "digest" in img:
                    ref += "@" + img["digest"]
                elif "newTag" in img:
                    ref += ":" + img["newTag"]
                c["image"] = ref
