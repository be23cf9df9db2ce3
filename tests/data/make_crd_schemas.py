"""Regenerate the custom resources' schemas in this folder (tests/data/README.md):
    python -m venv /tmp/crd && /tmp/crd/bin/pip install cloudcoil-models-keda==2.16.1.0 \
        cloudcoil-models-prometheus-operator==0.80.1.0 && /tmp/crd/bin/python tests/data/make_crd_schemas.py
Not a test dependency: the generated files are checked in."""
import json
from pathlib import Path

from cloudcoil.models.keda import v1alpha1 as keda
from cloudcoil.models.prometheus_operator import v1 as prom

HERE = Path(__file__).resolve().parent
MODELS = {
    "keda_scaledobject": (keda.ScaledObject, "KEDA 2.16.1", "cloudcoil-models-keda 2.16.1.0"),
    "keda_triggerauthentication": (keda.TriggerAuthentication, "KEDA 2.16.1", "cloudcoil-models-keda 2.16.1.0"),
    "prometheus_podmonitor": (prom.PodMonitor, "prometheus-operator 0.80.1",
                              "cloudcoil-models-prometheus-operator 0.80.1.0"),
}


def strict(node):
    """Kubernetes' strict field validation refuses a field the CRD does not declare."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for v in node.values():
            strict(v)
    elif isinstance(node, list):
        for v in node:
            strict(v)
    return node


for name, (model, version, package) in MODELS.items():
    schema = strict(model.model_json_schema(by_alias=True))
    schema["$comment"] = (f"{version} {model.__name__}: model_json_schema(by_alias=True) of {package} (PyPI), "
                          "whose models are generated from its CRDs; additionalProperties false added to every "
                          "object with declared properties. See tests/data/README.md.")
    (HERE / f"{name}.schema.json").write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
